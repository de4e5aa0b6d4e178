"""The pure training step against the expert peer on one GPU, bf16 autocast, in under 5 minutes.

At the handout's TinyStories baseline shape (batch 64) and at GPT-2 small's (batch 8, halved
until it fits), eager and torch.compile'd: tokens/s, MFU (FLOPs per step from
core/accounting.py over seconds over the chip's bf16 peak, from a table by device name or else a
timed matmul), peak memory, and the speed against the peer (bench/peer.py: fused QKV,
F.rms_norm, F.scaled_dot_product_attention, F.cross_entropy; clip_grad_norm_ and fused
torch.optim.AdamW). Then 300 steps of the pure step on a repeating token pattern, whose loss
must fall: the step trains.

    just bench gpu            # on a CUDA machine
    just bench gpu --smoke    # the eager rows at tiny shapes on the CPU, in seconds

The smoke mode checks that the script runs, not how fast: it skips the compiled variants (compile
is off) and prints no MFU (a tiny model on a CPU has no meaningful bf16 peak to divide by).
"""

import gc
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.common import SHAPES, StepFn, bench_parser, peer_step_fn, print_table, pure_step_fn
from core.accounting import training_step_flops
from core.config import ModelConfig
from core.schedule import warmup_cosine
from core.errors import UsageError
from params.init import init_params
from pipelines.command import command
from pipelines.flags import CommandParser, integer
from pipelines.training.data.batches import get_batch, step_generator
from pipelines.training.hardware.peak import peak_flops

VARIANTS = ("pure step, eager", "peer, eager", "pure step, compiled", "peer, compiled")
TINY = {"vocab_size": 128, "context_length": 32, "d_model": 32, "num_layers": 2, "num_heads": 2}


@dataclass(frozen=True)
class Setup:
    device: torch.device
    autocast: tuple[str, torch.dtype]
    peak: float | None  # None: no MFU column (smoke mode)
    compile: bool
    steps: int

    def variants(self) -> tuple[str, ...]:
        """The variants this setup runs: the compiled ones only when compile is on."""
        return VARIANTS if self.compile else tuple(v for v in VARIANTS if "compiled" not in v)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(variant: str, config: ModelConfig, batch_size: int, setup: Setup) -> StepFn:
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, config.vocab_size, (batch_size, config.context_length), generator=generator).to(setup.device) for _ in range(2))
    initial = init_params(config, torch.Generator().manual_seed(0), device=setup.device)
    schedule = warmup_cosine(1e-3, 1e-4, 10, 1000)
    compile = setup.compile and "compiled" in variant
    if variant.startswith("peer"):
        return peer_step_fn(config, initial, schedule, (x, y), compile=compile, autocast=setup.autocast)
    return pure_step_fn(config, initial, schedule, (x, y), compile=compile, autocast=setup.autocast)


def measure(variant: str, config: ModelConfig, batch_size: int, setup: Setup) -> dict:
    """Seconds per step (after 3 warm-up steps, compilation included there) and peak memory."""
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    step = make_step(variant, config, batch_size, setup)
    for _ in range(3):
        step()
    sync(setup.device)
    start = time.perf_counter()
    for _ in range(setup.steps):
        loss = step()
    sync(setup.device)
    seconds = (time.perf_counter() - start) / setup.steps
    memory = torch.cuda.max_memory_allocated(setup.device) if setup.device.type == "cuda" else 0
    return {"batch": batch_size, "seconds": seconds, "memory": memory, "loss": float(loss)}


def measure_fitting(variant: str, config: ModelConfig, batch_size: int, setup: Setup) -> dict:
    """measure() at `batch_size`, halved on each out-of-memory error."""
    while True:
        try:
            return measure(variant, config, batch_size, setup)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
        finally:
            gc.collect()
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()


def benchmark_shape(shape: str, config: ModelConfig, batch_size: int, setup: Setup) -> list[tuple[str, ...]]:
    results = {variant: measure_fitting(variant, config, batch_size, setup) for variant in setup.variants()}
    rows = []
    for variant, r in results.items():
        peer = results["peer, compiled" if "compiled" in variant else "peer, eager"]
        tokens = r["batch"] * config.context_length
        mfu = "–" if setup.peak is None else f"{training_step_flops(config, r['batch']) / r['seconds'] / setup.peak:.1%}"
        # Throughput ratio: batches may differ after an out-of-memory halving.
        speed = (tokens / r["seconds"]) / (peer["batch"] * config.context_length / peer["seconds"])
        rows.append((shape, variant, str(r["batch"]), f"{r['seconds'] * 1e3:.1f}", f"{tokens / r['seconds']:,.0f}",
                     mfu, f"{r['memory'] / 2**30:.2f}", f"{speed:.2f}"))
    return rows


def loss_curve(config: ModelConfig, batch_size: int, steps: int, lr: float, setup: Setup) -> list[float]:
    """Losses of `steps` pure steps on a repeating pattern of 97 token ids: a falling curve."""
    generator = torch.Generator().manual_seed(2)
    pattern = torch.randperm(config.vocab_size, generator=generator)[:97].numpy()
    tokens = np.tile(pattern, 64 * config.context_length // len(pattern) + 2)
    initial = init_params(config, torch.Generator().manual_seed(0), device=setup.device)
    schedule = warmup_cosine(lr, lr / 10, steps // 10, steps)
    batches = [get_batch(tokens, batch_size, config.context_length, setup.device, step_generator(0, i)) for i in range(steps)]
    step = pure_step_fn(config, initial, schedule, batches[0], autocast=setup.autocast)
    losses = [step(batch) for batch in batches]
    return [float(loss) for loss in losses]


def shapes(smoke: bool) -> list[tuple[str, ModelConfig, int]]:
    """(name, config, batch) of the two benchmark shapes; tiny stand-ins in smoke mode."""
    if smoke:
        return [("baseline", ModelConfig(**TINY), 4), ("gpt2-small", ModelConfig(**{**TINY, "num_layers": 3}), 2)]
    return [("baseline", ModelConfig(**SHAPES["baseline"][0]), 64), ("gpt2-small", ModelConfig(**SHAPES["gpt2-small"][0]), 8)]


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "gpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, compile off, a few steps")
    parser.add_argument("--steps", type=integer(1), default=10, help="timed steps per variant (after 3 warm-up steps)")
    parser.add_argument("--curve_steps", type=integer(1), default=300)
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise UsageError("no CUDA device: run with --smoke for the CPU check")
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        peak, about_peak = None, "SMOKE: tiny shapes on the CPU, eager only (compile off), no MFU"
    else:
        peak, source = peak_flops(device, torch.bfloat16)
        about_peak = f"peak {peak / 1e12:.3g} TFLOP/s ({source})"
    setup = Setup(device, (device.type, torch.bfloat16), peak, compile=not args.smoke, steps=2 if args.smoke else args.steps)
    print(f"torch {torch.__version__}; bf16 autocast; {about_peak}")
    rows = []
    for name, config, batch_size in shapes(args.smoke):
        print(f"{name}: {config}")
        rows += benchmark_shape(name, config, batch_size, setup)
    print()
    print_table(rows, ("shape", "variant", "batch", "ms/step", "tokens/s", "MFU", "peak GiB", "vs peer"))

    name, config, batch_size = shapes(args.smoke)[0]
    steps = 30 if args.smoke else args.curve_steps
    start = time.perf_counter()
    losses = loss_curve(config, batch_size, steps, 1e-2 if args.smoke else 1e-3, setup)
    print(f"\nloss curve: pure step, eager, {name} shape, batch {batch_size}, repeating pattern of 97 tokens, "
          f"{steps} steps in {time.perf_counter() - start:.1f} s")
    for i in sorted({*range(0, steps, max(1, steps // 10)), steps - 1}):
        print(f"  step {i + 1:4d}  loss {losses[i]:.3f}")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
