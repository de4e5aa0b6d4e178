"""The pure functional forward against a conventional nn.Module model with the same math: both
the handout's reference math (kernels="reference"), so the ratio is the cost of being a pure
function over a pytree. bench/train.py compares the fast path against an expert torch peer.

Times forward+backward of one batch on the CPU, eager and under torch.compile, and prints the
speed ratio (pure / module; above 1.0 means the pure function is faster).

    just bench model              # TinyStories-shaped model scaled to run in seconds
    just bench model --no_compile # eager only
"""

import dataclasses
import math
import sys
from collections.abc import Sequence

import torch
from torch import nn

from bench.common import add_model_arguments, bench_parser, model_config, print_speed_table, time_interleaved
from core.config import ModelConfig
from core.layers import softmax
from core.loss import cross_entropy
from core.model import forward
from params.init import init_params
from params.tree import flatten
from pipelines.command import command
from pipelines.flags import CommandParser, integer


# A conventional nanoGPT-style module model: the same equations, state in nn.Modules.
class Linear(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))

    def forward(self, x):
        return x @ self.weight.T


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        dtype, x = x.dtype, x.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(dtype)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (Linear(c.d_model, c.d_model) for _ in range(4))
        self.h = c.num_heads
        d_k = c.d_model // c.num_heads
        angles = torch.arange(c.context_length, dtype=torch.float64)[:, None] * c.rope_theta ** (
            -torch.arange(0, d_k, 2, dtype=torch.float64) / d_k
        )
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rope(self, x):
        seq = x.shape[-2]
        cos, sin = self.cos[:seq], self.sin[:seq]
        pairs = x.unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.h, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.rope(q), self.rope(k)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = torch.arange(s, device=x.device)[None, :] <= torch.arange(s, device=x.device)[:, None]
        out = softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
        return self.output_proj(out.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.ln1, self.ln2, self.attn = RMSNorm(c.d_model), RMSNorm(c.d_model), Attention(c)
        self.ffn = nn.ModuleDict({"w1": Linear(c.d_model, c.d_ff), "w2": Linear(c.d_ff, c.d_model), "w3": Linear(c.d_model, c.d_ff)})

    def forward(self, x):
        h = x + self.attn(self.ln1(x))
        y = self.ln2(h)
        f = self.ffn
        return h + f["w2"](nn.functional.silu(f["w1"](y)) * f["w3"](y))


class ModuleLM(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.token_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.ln_final, self.lm_head = RMSNorm(c.d_model), Linear(c.d_model, c.vocab_size)

    def forward(self, tokens):
        x = self.token_embeddings(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_final(x))


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "model")
    parser.add_argument("--batch", type=integer(1), default=8)
    add_model_arguments(parser, context=128, d_model=256, heads=8, vocab=10_000)
    parser.add_argument("--repeats", type=integer(1), default=15)
    parser.add_argument("--no_compile", action="store_true")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)

    config = dataclasses.replace(model_config(args), kernels="reference")  # the same math as ModuleLM
    params = init_params(config, torch.Generator().manual_seed(0))
    for leaf in flatten(params).values():
        leaf.requires_grad_(True)
    module = ModuleLM(config)
    module.load_state_dict(flatten(params), strict=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.vocab_size, (args.batch, config.context_length), generator=gen)
    y = torch.randint(0, config.vocab_size, (args.batch, config.context_length), generator=gen)
    torch.testing.assert_close(module(x), forward(params, x, config))  # same math, same numbers

    def loss_fn(p, x, y):
        return cross_entropy(forward(p, x, config), y)

    grad_fn = torch.func.grad(loss_fn)

    def pure_autograd(fwd=forward):
        def step():
            for leaf in flatten(params).values():
                leaf.grad = None
            cross_entropy(fwd(params, x, config), y).backward()
        return step

    def pure_func_grad(g=grad_fn):
        return lambda: g(params, x, y)

    def module_step(m=module):
        def step():
            m.zero_grad(set_to_none=True)
            cross_entropy(m(x), y).backward()
        return step

    variants = {"module": module_step(), "pure (autograd)": pure_autograd(), "pure (torch.func.grad)": pure_func_grad()}
    if not args.no_compile:
        compiled_forward = torch.compile(forward)
        compiled_module = torch.compile(module)
        variants.update({"module compiled": module_step(compiled_module), "pure compiled (autograd)": pure_autograd(compiled_forward)})

    print(f"config: {config}\nbatch {args.batch} x context {args.context}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} forward+backward steps\n")
    times = time_interleaved(variants, repeats=args.repeats)
    print_speed_table(times, args.batch * args.context, "module", "module compiled")


if __name__ == "__main__":
    sys.exit(main())
