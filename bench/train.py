"""The pure training step against the expert peer: nn.Module + torch.optim.AdamW.

One full step each (forward, backward, gradient clipping, AdamW with a cosine learning rate) from
identical weights on one fixed batch, eager and under torch.compile, timed in turn so that load
from other processes hits every variant alike. The peer (bench/peer.py) is the same model written
with torch's fused pieces (one QKV projection, F.rms_norm, F.scaled_dot_product_attention,
F.cross_entropy), stepped by clip_grad_norm_(foreach=True) and torch.optim.AdamW(foreach=True).
Prints tokens/s, the speed ratio against the peer (eager against eager, compiled against
compiled; above 1.0: the pure step is faster) and the fraction of the machine's fp32 matmul peak
(a 2048^3 matmul timed in the same run) each variant reaches: FLOPs per step from
core/accounting.py over seconds over peak. Compiled, the pure step puts loss, gradients and AdamW
under one torch.compile, as the trainer's --compile does (core/train_step.py's make_compiled_step).
Then the peak memory of each eager variant, each in a
fresh process: how far the peak resident set rises while it builds its model copy and optimizer
and takes three steps (bench/common.py's peak_memory_rise), against the peer's.

    just bench train                       # cpu-small shape, about a minute on two cores
    just bench train --shape baseline --repeats 3
    just bench train --no_compile          # eager only
"""

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch

from bench.common import SHAPES, bench_parser, peak_memory_rise, peer_step_fn, print_speed_table, print_table, pure_step_fn, time_interleaved
from core.accounting import training_step_flops
from core.config import ModelConfig
from core.schedule import warmup_cosine
from pipelines.command import command
from pipelines.flags import CommandParser, integer
from pipelines.training.hardware.peak import measured_matmul_flops
from params.init import init_params

EAGER_PEER, COMPILED_PEER = "peer: nn.Module + torch.optim.AdamW, eager", "peer: nn.Module + torch.optim.AdamW, compiled"


def variants(config: ModelConfig, batch: tuple[torch.Tensor, torch.Tensor], compile: bool) -> dict[str, Callable]:
    """name -> a function that builds that variant's step function."""
    initial = init_params(config, torch.Generator().manual_seed(0))
    schedule = warmup_cosine(1e-3, 1e-4, 10, 1000)
    makers = {
        EAGER_PEER: lambda: peer_step_fn(config, initial, schedule, batch),
        "pure step, eager (autograd.grad)": lambda: pure_step_fn(config, initial, schedule, batch, grad_mode="autograd"),
        "pure step, eager (torch.func)": lambda: pure_step_fn(config, initial, schedule, batch, grad_mode="func"),
    }
    if compile:
        makers[COMPILED_PEER] = lambda: peer_step_fn(config, initial, schedule, batch, compile=True)
        makers["pure step, compiled (loss, grads and AdamW)"] = lambda: pure_step_fn(config, initial, schedule, batch, compile=True)
    return makers


def memory_of(maker: Callable) -> int:
    """Peak memory rise of building a variant and taking three steps with it."""

    def build_and_step() -> None:
        step = maker()
        for _ in range(3):
            step()

    return peak_memory_rise(build_and_step, torch.device("cpu"), calls=1)


def print_memory_table(args: argparse.Namespace, names: list[str]) -> None:
    """Runs this script once per variant with --memory-of, each in a fresh process."""
    rises = {}
    for name in names:
        command = [sys.executable, "-m", "bench.train", "--shape", args.shape, "--memory_of", name]
        command += ["--batch", str(args.batch)] if args.batch else []
        rises[name] = int(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])
    rows = [(name, f"{rise / 2**20:.1f}", f"{rise / rises[EAGER_PEER]:.2f}") for name, rise in rises.items()]
    print("\npeak memory of building the variant and three steps, one fresh process each (peak RSS rise)\n")
    print_table(rows, ("variant", "MiB", "vs peer"))


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "train")
    parser.add_argument("--shape", choices=("cpu-small", "baseline"), default="cpu-small")
    parser.add_argument("--batch", type=integer(1), help="default: the shape's (cpu-small 8, baseline 4)")
    parser.add_argument("--repeats", type=integer(1), default=15)
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-process memory measurement")
    parser.add_argument("--memory_of", metavar="VARIANT", help=argparse.SUPPRESS)  # one variant's memory, for print_memory_table
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)

    fields, default_batch = SHAPES[args.shape]
    config, batch_size = ModelConfig(**fields), args.batch or default_batch
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, config.vocab_size, (batch_size, config.context_length), generator=generator) for _ in range(2))
    makers = variants(config, (x, y), compile=not args.no_compile)
    if args.memory_of:
        print(memory_of(makers[args.memory_of]))
        return
    fns = {name: make() for name, make in makers.items()}

    peak = measured_matmul_flops("cpu", torch.float32, size=2048)
    print(f"shape {args.shape}: {config}\nbatch {batch_size} x context {config.context_length}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fp32 matmul peak measured {peak / 1e9:.1f} GFLOP/s (2048^3, best of 5); "
          f"median of {args.repeats} training steps (warm-up and compilation excluded)\n")
    times = time_interleaved(fns, repeats=args.repeats)
    print_speed_table(
        times, batch_size * config.context_length, EAGER_PEER, COMPILED_PEER,
        flops_per_step=training_step_flops(config, batch_size), peak_flops=peak, peer_label="peer",
    )
    if not args.no_memory:
        print_memory_table(args, [name for name in makers if "eager" in name])


if __name__ == "__main__":
    sys.exit(main())
