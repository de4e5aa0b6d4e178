"""The pure training step against a conventional nn.Module + torch.optim.AdamW loop.

One full step each (forward, backward, gradient clipping, AdamW with a cosine learning rate), on
one fixed batch, eager and under torch.compile, timed in turn so that load from other processes
hits every variant alike. Prints tokens/s and the speed ratio against the conventional peer
(above 1.0: the pure step is faster).

    just bench train               # cpu-small-shaped model, about a minute on two cores
    just bench train --no-compile  # eager only
"""

import argparse

import torch

from bench.common import add_model_arguments, model_config, print_speed_table, time_interleaved
from bench.model import ModuleLM
from core.loss import cross_entropy
from core.optim import adamw, chain, clip_by_global_norm
from core.schedule import warmup_cosine
from core.train_state import init_train_state
from core.train_step import make_train_step
from params.init import init_params
from params.tree import flatten

BETAS, EPS, WEIGHT_DECAY = (0.9, 0.95), 1e-8, 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    add_model_arguments(parser, context=128, d_model=128, heads=4, vocab=2048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    config = model_config(args)
    schedule = warmup_cosine(1e-3, 1e-4, 10, 1000)
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.vocab_size, (args.batch, config.context_length), generator=generator)
    y = torch.randint(0, config.vocab_size, (args.batch, config.context_length), generator=generator)
    initial = init_params(config, torch.Generator().manual_seed(0))

    def pure(grad_mode: str, compile: bool = False):
        # Weight decay on every leaf, as the peer's single parameter group does.
        optimizer = chain(clip_by_global_norm(1.0), adamw(schedule, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY))
        train_step = make_train_step(config, optimizer, grad_mode=grad_mode, compile=compile)
        holder = {"state": init_train_state(initial, optimizer, rng=0)}

        def step() -> None:
            holder["state"], _ = train_step(holder["state"], (x, y))

        return step

    def module(compile: bool = False):
        model = ModuleLM(config)
        model.load_state_dict(flatten(initial))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, foreach=True)
        forward = torch.compile(model) if compile else model
        state = {"step": 0}

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            cross_entropy(forward(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            for group in optimizer.param_groups:
                group["lr"] = schedule(state["step"])
            optimizer.step()
            state["step"] += 1

        return step

    variants = {
        "module + torch.optim.AdamW": module(),
        "pure step (torch.func)": pure("func"),
        "pure step (autograd.grad)": pure("autograd"),
    }
    if not args.no_compile:
        variants["module compiled + torch.optim.AdamW"] = module(compile=True)
        variants["pure step compiled (autograd.grad)"] = pure("autograd", compile=True)
        variants["pure step compiled (torch.func)"] = pure("func", compile=True)

    print(f"config: {config}\nbatch {args.batch} x context {args.context}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} training steps (warm-up and compilation excluded)\n")
    times = time_interleaved(variants, repeats=args.repeats)
    print_speed_table(times, args.batch * args.context, "module + torch.optim.AdamW", "module compiled + torch.optim.AdamW")


if __name__ == "__main__":
    main()
