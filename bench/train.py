"""The pure training step against the expert peer: nn.Module + torch.optim.AdamW.

One full step each (forward, backward, gradient clipping, AdamW with a cosine learning rate) from
identical weights on one fixed batch, eager and under torch.compile, timed in turn so that load
from other processes hits every variant alike. The peer (bench/peer.py) is the same model written
with torch's fused pieces (one QKV projection, F.rms_norm, F.scaled_dot_product_attention,
F.cross_entropy), stepped by clip_grad_norm_(foreach=True) and torch.optim.AdamW(foreach=True).
Prints tokens/s, the speed ratio against the peer (eager against eager, compiled against
compiled; above 1.0: the pure step is faster) and the fraction of the machine's fp32 matmul peak
(a 2048^3 matmul timed in the same run) each variant reaches: FLOPs per step from
core/accounting.py over seconds over peak.

    just bench train                       # cpu-small shape, about a minute on two cores
    just bench train --shape baseline --repeats 3
    just bench train --no-compile          # eager only
"""

import argparse

import torch

from bench.common import SHAPES, peer_step_fn, print_speed_table, pure_step_fn, time_interleaved
from core.accounting import training_step_flops
from core.config import ModelConfig
from core.schedule import warmup_cosine
from pipelines.training.peak import measured_matmul_flops
from params.init import init_params

EAGER_PEER, COMPILED_PEER = "peer: nn.Module + torch.optim.AdamW, eager", "peer: nn.Module + torch.optim.AdamW, compiled"


def variants(config: ModelConfig, batch: tuple[torch.Tensor, torch.Tensor], compile: bool) -> dict:
    initial = init_params(config, torch.Generator().manual_seed(0))
    schedule = warmup_cosine(1e-3, 1e-4, 10, 1000)
    fns = {
        EAGER_PEER: peer_step_fn(config, initial, schedule, batch),
        "pure step, eager (autograd.grad)": pure_step_fn(config, initial, schedule, batch, grad_mode="autograd"),
        "pure step, eager (torch.func)": pure_step_fn(config, initial, schedule, batch, grad_mode="func"),
    }
    if compile:
        fns[COMPILED_PEER] = peer_step_fn(config, initial, schedule, batch, compile=True)
        fns["pure step, compiled (autograd.grad)"] = pure_step_fn(config, initial, schedule, batch, grad_mode="autograd", compile=True)
        fns["pure step, compiled (torch.func)"] = pure_step_fn(config, initial, schedule, batch, grad_mode="func", compile=True)
    return fns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("cpu-small", "baseline"), default="cpu-small")
    parser.add_argument("--batch", type=int, help="default: the shape's (cpu-small 8, baseline 4)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)

    fields, default_batch = SHAPES[args.shape]
    config, batch_size = ModelConfig(**fields), args.batch or default_batch
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, config.vocab_size, (batch_size, config.context_length), generator=generator) for _ in range(2))
    fns = variants(config, (x, y), compile=not args.no_compile)

    peak = measured_matmul_flops("cpu", torch.float32, size=2048)
    print(f"shape {args.shape}: {config}\nbatch {batch_size} x context {config.context_length}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fp32 matmul peak measured {peak / 1e9:.1f} GFLOP/s (2048^3, best of 5); "
          f"median of {args.repeats} training steps (warm-up and compilation excluded)\n")
    times = time_interleaved(fns, repeats=args.repeats)
    print_speed_table(
        times, batch_size * config.context_length, EAGER_PEER, COMPILED_PEER,
        flops_per_step=training_step_flops(config, batch_size), peak_flops=peak, peer_label="peer",
    )


if __name__ == "__main__":
    main()
