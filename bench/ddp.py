"""Data-parallel training on the CPU: one process against two (gloo, one thread each), with the
gradient all-reduce overlapped with the backward pass or not.

Each variant takes training steps of the trainer's pure step (donated AdamW with clipping) on
`--batch` rows per process; two processes average their gradients with pipelines/training/distributed/grad_sync.py.
Prints tokens/s of the global batch, the speed-up over one process on one thread, and the share of
step time the processes spent blocked on the all-reduce. One process on two threads is shown too:
it is what two cores give without data parallelism.

    just bench ddp                  # cpu-small shape, batch 8 per process
    just bench ddp --steps 20 --bucket_mb 1
"""

import argparse
import os
import sys
from collections.abc import Sequence
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import MAX_NORM, SHAPES, bench_parser, print_table
from core.config import ModelConfig
from core.optim import adamw, chain, clip_by_global_norm
from core.train_state import init_train_state
from core.train_step import make_train_step
from core.tree import tree_leaves
from params.init import init_params
from pipelines.command import command
from pipelines.flags import CommandParser, integer, number
from pipelines.training.distributed.grad_sync import BucketedGradSync


def timed_steps(config: ModelConfig, batch: int, steps: int, sync: bool, overlap: bool, bucket_mb: float, rank: int) -> tuple[float, float]:
    """Median seconds per step and the share of them blocked on the all-reduce."""
    optimizer = chain(clip_by_global_norm(MAX_NORM), adamw(1e-3, weight_decay=0.1))
    state = init_train_state(init_params(config, torch.Generator().manual_seed(0)), optimizer, rng=0)
    grad_sync = BucketedGradSync(tree_leaves(state.params), int(bucket_mb * 2**20), overlap=overlap) if sync else None
    step = make_train_step(config, optimizer, donate=True, sync=grad_sync)
    generator = torch.Generator().manual_seed(rank)
    times, waited = [], 0.0
    for index in range(steps + 2):  # two warm-up steps
        x, y = (torch.randint(0, config.vocab_size, (batch, config.context_length), generator=generator) for _ in range(2))
        before = grad_sync.wait_seconds if grad_sync else 0.0
        started = time.perf_counter()
        state, _ = step(state, (x, y))
        if index >= 2:
            times.append(time.perf_counter() - started)
            waited += (grad_sync.wait_seconds - before) if grad_sync else 0.0
    return statistics.median(times), waited / sum(times)


def _worker(rank: int, world: int, store: str, args: argparse.Namespace, overlap: bool, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        config = ModelConfig(**SHAPES[args.shape][0])
        results[rank] = timed_steps(config, args.batch, args.steps, True, overlap, args.bucket_mb, rank)
    finally:
        dist.destroy_process_group()


def two_processes(args: argparse.Namespace, overlap: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, os.path.join(directory, "store"), args, overlap, results), nprocs=2)
        return max(results[0][0], results[1][0]), max(results[0][1], results[1][1])


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "ddp")
    parser.add_argument("--shape", choices=("cpu-small", "baseline"), default="cpu-small")
    parser.add_argument("--batch", type=integer(1), default=8, help="rows per process")
    parser.add_argument("--steps", type=integer(1), default=10)
    parser.add_argument("--bucket_mb", type=number(0, open_low=True), default=25.0)
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    config = ModelConfig(**SHAPES[args.shape][0])
    tokens = args.batch * config.context_length
    rows = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows[f"1 process, {threads} thread{'s' if threads > 1 else ''}"] = (timed_steps(config, args.batch, args.steps, False, False, 0, 0)[0], 0.0, 1)
    torch.set_num_threads(1)
    rows["2 processes x 1 thread, all-reduce after backward"] = (*two_processes(args, overlap=False), 2)
    rows["2 processes x 1 thread, all-reduce overlapped"] = (*two_processes(args, overlap=True), 2)
    gradient_mb = sum(p.numel() for p in tree_leaves(init_params(config, torch.Generator()))) * 4 / 2**20
    print(f"shape {args.shape}: {config}\n{args.batch} rows x {config.context_length} tokens per process, gloo, torch "
          f"{torch.__version__}, gradients {gradient_mb:.1f} MB in buckets of {args.bucket_mb} MB; median of {args.steps} steps\n")
    base = rows["1 process, 1 thread"][0]
    table = [(name, f"{seconds * 1e3:.0f}", f"{world * tokens / seconds:,.0f}", f"{world * base / seconds:.2f}", f"{wait:.0%}")
             for name, (seconds, wait, world) in rows.items()]
    print_table(table, ("variant", "ms/step", "tokens/s", "vs 1 process, 1 thread", "blocked on all-reduce"))


if __name__ == "__main__":
    sys.exit(main())
