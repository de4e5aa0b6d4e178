"""One benchmark at two commits, side by side: did a change make it faster or slower?

    just bench commits --base HEAD                     # the working tree's training steps against HEAD's
    just bench commits --base e7e4347 --head HEAD --bench sweep --d_model 128

Two runs of `just bench train` on a shared machine can differ by 10% for no reason of the code,
more than most changes move a step. Here both sides run at once instead: each in a worker process
of its own (bench/commit_worker.py) that imports that side's `core`, `params`, `pipelines` and
`bench` (a commit exported with `git archive` into a temporary folder, or the working tree), builds
the benchmark's variants as that side's bench builds them, and then calls one variant at a time on
this process's word: base, head, base, head, so that load from other processes hits both sides
alike. The benchmarks:

    train    bench/train.py's steps: the expert peer and our pure step, eager and compiled
    sweep    bench/sweep.py's one-process arrangements: 8 runs as one stacked model, and one by one

Prints each variant's median milliseconds per call at both sides and the head's speed against the
base (above 1.0: the head is faster). The peer's code is the same at both sides, so its row shows
how far two processes differ when the code does not.
"""

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import bench_parser, print_table
from core.errors import UsageError
from pipelines.command import command
from pipelines.flags import CommandParser, integer
from pipelines.training.hardware.malloc import MMAP_THRESHOLD_MAX, TRIM_THRESHOLD_KEPT

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "bench" / "commit_worker.py"
SETTLE_S = 0.02  # between calls: the idle side's torch threads stop spinning before the other starts
# glibc's settings for keeping freed memory, as `bench sweep` sets them, through the environment: the side's
# own code may keep the function elsewhere
KEEP_FREED_MEMORY = {"MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_KEPT), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_MAX)}


class Side:
    """One worker: the benchmark's variants built from the files under `root`. Both sides' workers
    start at once and build side by side; the timing starts when both are ready."""

    def __init__(self, label: str, root: Path, spec: dict) -> None:
        env = {**os.environ, "PYTHONPATH": str(root), **(KEEP_FREED_MEMORY if spec["bench"] == "sweep" else {})}
        slow = " (compiling: a minute or more)" if spec.get("compile") else ""
        print(f"{label}: building and warming up its variants{slow}", file=sys.stderr, flush=True)
        self.label = label
        self.errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty worker never blocks on it
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(WORKER), json.dumps(spec)], cwd=root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
        )
        self.bench = spec["bench"]
        self.names: list[str] = []

    def wait_ready(self) -> None:
        """Until the worker has built and warmed up its variants; their names are then in `names`."""
        ready = self.process.stdout.readline()
        if not ready:
            raise UsageError(f"{self.label}: its bench {self.bench} could not be built: {self._last_error()}")
        self.names = json.loads(ready)

    def call(self, name: str) -> float:
        try:
            self.process.stdin.write(name + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker has ended: the empty answer below says so
        answer = self.process.stdout.readline()
        if not answer:
            raise UsageError(f"{self.label}: its worker stopped while running {name!r}: {self._last_error()}")
        return float(answer)

    def _last_error(self) -> str:
        """The last line the ended worker wrote to stderr."""
        self.process.wait()
        self.errors.seek(0)
        lines = self.errors.read().strip().splitlines()
        return lines[-1] if lines else f"no output, exit status {self.process.returncode}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        self.errors.close()


def export(revision: str, into: Path) -> str:
    """The files of commit `revision` under `into`; returns the commit's short hash."""
    found = subprocess.run(["git", "rev-parse", "--short", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if found.returncode != 0:
        raise UsageError(f"--base/--head: no commit {revision!r} in {ROOT}")
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return found.stdout.strip()


def measure(sides: list[Side], names: list[str], repeats: int) -> dict[tuple[str, str], float]:
    """Median seconds per call of each (side label, variant), the sides taking turns call by call."""
    samples: dict[tuple[str, str], list[float]] = {}
    for round_index in range(repeats):
        print(f"round {round_index + 1} of {repeats}", end="\r", file=sys.stderr, flush=True)
        for name in names:
            for side in sides:
                time.sleep(SETTLE_S)
                samples.setdefault((side.label, name), []).append(side.call(name))
    print(" " * 20, end="\r", file=sys.stderr, flush=True)
    return {key: statistics.median(values) for key, values in samples.items()}


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "commits")
    parser.add_argument("--base", required=True, help="the commit to compare against (any git revision)")
    parser.add_argument("--head", help="the commit to compare (default: the working tree, uncommitted changes included)")
    parser.add_argument("--bench", choices=("train", "sweep"), default="train")
    parser.add_argument("--shape", choices=("cpu-small", "baseline"), default="cpu-small", help="bench train's model shape")
    parser.add_argument("--no_compile", action="store_true", help="bench train: eager steps only")
    parser.add_argument("--d_model", type=integer(1), default=128, help="bench sweep's model width")
    parser.add_argument("--batch", type=integer(1), default=8, help="bench sweep's batch per run")
    parser.add_argument("--steps", type=integer(1), default=3, help="bench sweep: steps of all 8 runs per call")
    parser.add_argument("--repeats", type=integer(1), default=15, help="timed calls of each variant at each side")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.bench == "train":
        spec = {"bench": "train", "shape": args.shape, "compile": not args.no_compile}
    else:
        spec = {"bench": "sweep", "d_model": args.d_model, "batch": args.batch, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="lmkit-bench-commits-") as folder:
        base = export(args.base, Path(folder, "base"))
        head = export(args.head, Path(folder, "head")) if args.head else "working tree"
        labels = (f"base {base}", f"head {head}")
        sides: list[Side] = []
        try:
            sides.append(Side(labels[0], Path(folder, "base"), spec))
            sides.append(Side(labels[1], Path(folder, "head") if args.head else ROOT, spec))
            for side in sides:
                side.wait_ready()
            names = [name for name in sides[0].names if name in sides[1].names]
            print(f"bench {args.bench} {json.dumps(spec)}: {labels[0]} against {labels[1]}, "
                  f"median of {args.repeats} calls each, the two sides in turn\n")
            times = measure(sides, names, args.repeats)
        finally:
            for side in sides:
                side.close()
    rows = [(name, f"{times[labels[0], name] * 1e3:.1f}", f"{times[labels[1], name] * 1e3:.1f}",
             f"{times[labels[0], name] / times[labels[1], name]:.2f}") for name in names]
    print_table(rows, ("variant", f"{labels[0]} ms", f"{labels[1]} ms", "head speed vs base"))
    for side in sides:
        missing = [name for name in side.names if name not in names]
        if missing:
            print(f"only at {side.label}: {', '.join(missing)}")


if __name__ == "__main__":
    sys.exit(main())
