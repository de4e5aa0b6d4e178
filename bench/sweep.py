"""A learning-rate sweep of K = 8 runs of one model: trained at once as one stacked model (`just
sweep --vmap`) against the same 8 runs trained one by one.

The same work in three arrangements: 8 runs (run k from seed k, at learning rate 1e-4 x 2^k), each
taking --steps steps on its own batches, drawn as the trainers draw them (get_batch from a token
array with the run's step generator):

    vectorised (vmap)          one process: the trainer's step over K stacked models
                               (core/train_step.py, variants=True)
    sequential, one process    one process: the trainer's donated step, run after run
    2 jobs x 1 thread          two processes side by side, one thread each, 4 runs each, one after
                               another: what `just sweep --jobs 2` runs on two cores

The one-process arrangements run with each of --threads (default: 1 and all cores): on a machine
shared with other work, one thread can beat two by far, since torch's threads spin-wait for each
other. Prints, for each model width, the tokens per second of each arrangement (all 8 runs
together) and its speed against the best sequential one (above 1.0: faster). Setup is excluded
(model initialisation, one warm-up step per run, process start); each figure is the median of
--repeats rounds in which the arrangements take turns. Every process keeps its freed memory
(pipelines/training/hardware/malloc.py, as a vectorised sweep on the CPU does) unless --malloc_default.

    just bench sweep                                  # d_model 64, 128, 256: minutes (see README)
    just bench sweep --d_models 32,64 --batch 4 --model.context_length 64 --steps 20
    just bench sweep --device cuda --d_models 64,128,256,512,768
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from bench.common import BETAS, EPS, MAX_NORM, MODEL_FLAGS, WEIGHT_DECAY, add_model_arguments, bench_parser, print_table
from core.config import ModelConfig
from core.optim import adamw, chain, clip_by_global_norm, decay_matrices
from core.schedule import stack_schedules, warmup_cosine
from core.stack import stack_trees, variant_values
from core.train_state import init_train_state
from core.train_step import make_train_step
from params.init import init_params
from pipelines.command import command
from pipelines.flags import CommandParser, integer, integers
from pipelines.training.data.batches import get_batch, step_generator
from pipelines.training.hardware.malloc import keep_freed_memory
from pipelines.training.run.start import VMAP_FALLBACK_WARNING

VARIANTS, WARMUP, DECAY = 8, 10, 1000
VECTORISED, SEQUENTIAL, JOBS = "vectorised (vmap), 1 process", "sequential, 1 process", "sequential, 2 jobs x 1 thread"


def learning_rate(index: int) -> float:
    return 1e-4 * 2**index


class Runs:
    """Runs first .. first+count-1 of the sweep, trained one by one with the trainer's step."""

    def __init__(self, config: ModelConfig, data: np.ndarray, batch: int, device: torch.device, first: int, count: int) -> None:
        self.config, self.data, self.batch, self.device = config, data, batch, device
        self.seeds = list(range(first, first + count))
        self.states, self.steps = [], []
        for seed in self.seeds:
            lr = learning_rate(seed)
            optimizer = chain(clip_by_global_norm(MAX_NORM), adamw(warmup_cosine(lr, lr / 10, WARMUP, DECAY), *BETAS, EPS, WEIGHT_DECAY, decay_matrices))
            params = init_params(config, torch.Generator().manual_seed(seed), device=device)
            self.states.append(init_train_state(params, optimizer, rng=seed))
            self.steps.append(make_train_step(config, optimizer, donate=True))
        self.train(1)  # warm-up, untimed

    def train(self, steps: int) -> None:
        for k, step in enumerate(self.steps):
            for _ in range(steps):
                state = self.states[k]
                generator = step_generator(state.rng, state.step)
                batch = get_batch(self.data, self.batch, self.config.context_length, self.device, generator)
                self.states[k], _ = step(state, batch)


class Vectorised:
    """The 8 runs as one stacked model, with the stacked optimizer."""

    def __init__(self, config: ModelConfig, data: np.ndarray, batch: int, device: torch.device) -> None:
        self.config, self.data, self.batch, self.device = config, data, batch, device
        lrs = [learning_rate(k) for k in range(VARIANTS)]
        values = lambda value: variant_values(value, VARIANTS)  # noqa: E731
        schedule = stack_schedules([warmup_cosine(lr, lr / 10, WARMUP, DECAY) for lr in lrs])
        adam = adamw(schedule, values(BETAS[0]), values(BETAS[1]), values(EPS), values(WEIGHT_DECAY), decay_matrices)
        optimizer = chain(clip_by_global_norm(values(MAX_NORM)), adam)
        params = stack_trees([init_params(config, torch.Generator().manual_seed(k), device=device) for k in range(VARIANTS)])
        self.state = init_train_state(params, optimizer, rng=range(VARIANTS))
        self.step = make_train_step(config, optimizer, donate=True, variants=True)
        self.train(1)  # warm-up, untimed

    def train(self, steps: int) -> None:
        for _ in range(steps):
            batches = [
                get_batch(self.data, self.batch, self.config.context_length, self.device, step_generator(rng, self.state.step))
                for rng in self.state.rng
            ]
            stacked = torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])
            self.state, _ = self.step(self.state, stacked)


def timed(train, steps: int, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    train(steps)
    _synchronize(device)
    return time.perf_counter() - start


def two_jobs_seconds(args: argparse.Namespace, d_model: int) -> float:
    """Wall-clock seconds of two worker processes (one thread each, half the runs each) from the
    moment both are set up and told to go until both are done."""
    half = VARIANTS // 2
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.sweep", "--worker", f"{first},{half}", "--d_models", str(d_model), *_shape_flags(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_one_thread_env(),
        )
        for first in (0, half)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        worker.stdout.readline()  # "done"
    seconds = time.perf_counter() - start
    for worker in workers:
        worker.wait()
    return seconds


def worker(args: argparse.Namespace) -> None:
    """One of the two jobs: set up its runs, wait for "go", train them, say "done"."""
    torch.set_num_threads(1)
    first, count = (int(part) for part in args.worker.split(","))
    (d_model,) = args.d_models  # two_jobs_seconds gives its workers one width
    config, data, device = _setup(args, d_model)
    runs = Runs(config, data, args.batch, device, first, count)
    print("ready", flush=True)
    sys.stdin.readline()
    runs.train(args.steps)
    _synchronize(device)
    print("done", flush=True)


def measure(args: argparse.Namespace, d_model: int, threads: list[int]) -> dict[str, float]:
    """Median seconds of each arrangement for --steps steps of all 8 runs."""
    config, data, device = _setup(args, d_model)
    vectorised, sequential = Vectorised(config, data, args.batch, device), Runs(config, data, args.batch, device, 0, VARIANTS)
    samples: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for count in threads:
            torch.set_num_threads(count)
            for name, arrangement in ((VECTORISED, vectorised), (SEQUENTIAL, sequential)):
                samples.setdefault(f"{name}, {count} thread{'s' if count > 1 else ''}", []).append(timed(arrangement.train, args.steps, device))
        if not args.no_jobs:
            samples.setdefault(JOBS, []).append(two_jobs_seconds(args, d_model))
    torch.set_num_threads(threads[-1])
    return {name: statistics.median(s) for name, s in samples.items()}


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "sweep")
    parser.add_argument("--d_models", type=integers(1), default=[64, 128, 256], metavar="N,N", help="model widths, comma-separated")
    add_model_arguments(parser, context=128, d_model=None, heads=4, vocab=2048)  # --d_models sets the widths
    parser.add_argument("--batch", type=integer(1), default=8)
    parser.add_argument("--steps", type=integer(1), default=3, help="timed steps of each run per round")
    parser.add_argument("--repeats", type=integer(1), default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=integers(1, 4096), metavar="N,N",
                        help="thread counts of the one-process arrangements, comma-separated (default: 1 and all)")
    parser.add_argument("--no_jobs", action="store_true", help="skip the two-process arrangement")
    parser.add_argument("--malloc_default", action="store_true", help="leave glibc's thresholds as they are in every process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # FIRST,COUNT: one of the two jobs
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=VMAP_FALLBACK_WARNING)  # this process's: the bench's entry point
    kept = not args.malloc_default and keep_freed_memory()
    if args.worker:
        worker(args)
        return
    threads = sorted({1, torch.get_num_threads()}) if args.threads is None else args.threads
    print(f"K = {VARIANTS} learning-rate variants, {args.layers} layers, vocab {args.vocab}, batch {args.batch} x context "
          f"{args.context} per run, {args.steps} timed steps per run, median of {args.repeats} rounds; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, device {args.device}, freed memory kept: {kept}\n")
    tokens = VARIANTS * args.steps * args.batch * args.context
    for d_model in args.d_models:
        times = measure(args, d_model, threads)
        best = min(seconds for name, seconds in times.items() if not name.startswith(VECTORISED))
        rows = [(name, f"{seconds * 1e3 / args.steps:.0f}", f"{tokens / seconds:,.0f}", f"{best / seconds:.2f}") for name, seconds in times.items()]
        print(f"d_model {d_model}:")
        print_table(rows, ("arrangement", "ms per step of all 8", "tokens/s", "speed vs best sequential"))
        print()


def _setup(args: argparse.Namespace, d_model: int) -> tuple[ModelConfig, np.ndarray, torch.device]:
    config = ModelConfig(vocab_size=args.vocab, context_length=args.context, d_model=d_model, num_layers=args.layers, num_heads=args.heads)
    data = np.random.default_rng(0).integers(0, args.vocab, 1 << 20).astype(np.uint16)
    return config, data, torch.device(args.device)


def _shape_flags(args: argparse.Namespace) -> list[str]:
    flags = {**{MODEL_FLAGS[name]: name for name in ("layers", "heads", "vocab", "context")}, "--batch": "batch",
             "--steps": "steps", "--device": "device"}
    return [item for flag, name in flags.items() for item in (flag, str(getattr(args, name)))] + (
        ["--malloc_default"] if args.malloc_default else [])


def _one_thread_env() -> dict[str, str]:
    # Torch reads these when it starts, as a sweep's trainers do (pipelines/experiments/sweep.py).
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
