"""Run a set of training variants and summarise them:

    python -m pipelines.experiments.sweep tinystories/cpu-small --vary schedule.lr=1e-4,1e-3,1e-2 --set data.path=../shared/data --out runs/lr
    python -m pipelines.experiments.sweep tinystories/cpu-small --variant base --variant model.norm=none --variant model.norm=post+schedule.lr=1e-3 ...

CONFIG is a preset (`DATASET/PRESET`) or a JSON config file (e.g. a run's config.json, applied over
the dataset's baseline preset as `--config` does for the trainer). The variants are the grid of
every `--vary NAME=V1,V2,...` (cartesian product), times every `--variant`: assignments joined
by `+`, or `base` for none, optionally prefixed by a run-directory name without "=" (`DIR:N=V+N=V`).
Run-directory names are plain folder names (no '/', not '..'), so every run stays under the sweep directory.
`--set NAME=VALUE` applies to them all. NAME is a setting's dotted name, as for the trainer
(`schedule.lr`, `model.norm`, `data.batch_size`; pipelines/training/config/config.py).

Each variant trains in a subprocess (`python -m pipelines.training.cli`) in its own run directory under
the sweep directory, so a crash or a divergence ends that run only, and several can run side by
side with a few threads each. A variant whose summary.json says completed or diverged is skipped
on the next call, and an interrupted one is resumed: the sweep is resumable. At the end it writes
summary.json, summary.md and curves.png (loss against steps and wall-clock seconds) to the sweep
directory.

With `--vmap`, variants that differ only in their seed and optimizer settings (learning rate and
schedule, betas, eps, weight decay, clipping) train in this process as stacked groups instead, each
group one stacked model, into the same run directories (pipelines/experiments/vmap_sweep.py); a
variant that stacks with no other runs one by one, as without --vmap.
"""

import itertools
from argparse import RawDescriptionHelpFormatter
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from core.errors import UsageError
from pipelines.command import command
from pipelines.experiments.vmap_sweep import record_request, train_stacked
from pipelines.flags import CommandParser, integer, processes
from pipelines.training.hardware.malloc import keep_freed_memory
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.storage.run_dir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, checkpoint_path
from pipelines.training.config.config import TrainConfig, parse_overrides, read_config_file, resolve_config
from pipelines.files.atomic import write_atomic

SWEEP_SUMMARY_JSON, SWEEP_SUMMARY_MD, SWEEP_CURVES = "summary.json", "summary.md", "curves.png"
FINISHED = ("completed", "diverged")


@dataclass(frozen=True)
class Variant:
    name: str  # also the run directory's name, e.g. "schedule.lr=0.001,data.batch_size=8"
    overrides: dict[str, Any]  # typed, by field name: the ones that make this variant differ


def parse_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"expected FIELD=VALUE, got {text!r}")
    return name, value.strip()


def make_variants(vary: Sequence[str], variants: Sequence[str]) -> list[Variant]:
    """The grid of `vary` axes ("schedule.lr=1e-4,1e-3") times the listed `variants`
    ("model.norm=post+schedule.lr=1e-3", "base", or named for its run directory:
    "bs1:data.batch_size=1+max_steps=4096"); one
    variant with no overrides when both are empty."""
    axes = []
    for spec in vary:
        name, values = parse_assignment(spec)
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not texts:
            raise UsageError(f"--vary {spec!r}: no values")
        axes.append([(name, text) for text in texts])
    listed = []  # (given name or "", assignments)
    for spec in variants:
        label, sep, assignments = spec.partition(":")
        if not sep or "=" in label:  # no "NAME:" prefix
            label, assignments = "", spec
        pairs = [] if assignments.strip() == "base" else [parse_assignment(part) for part in assignments.split("+")]
        listed.append((label.strip(), pairs))
    result, seen = [], set()
    for point in itertools.product(*axes):
        for label, extra in listed or [("", [])]:
            pairs = list(point) + extra
            names = [f"{field}={text}" for field, text in point] + ([label] if label else [f"{f}={t}" for f, t in extra])
            name = check_run_name(",".join(names) or "base")
            if name in seen:
                raise UsageError(f"variant {name!r} is listed twice")
            seen.add(name)
            result.append(Variant(name, parse_overrides(pairs)))
    return result


def check_run_name(name: str) -> str:
    """`name` when it is a plain folder name, so the run stays inside the sweep directory; else
    UsageError. A name with a '/' would nest the run or, absolute or with '..', put it elsewhere."""
    separators = {"/", "\0", os.sep} | ({os.altsep} if os.altsep else set())
    if name in ("", ".", "..") or name.startswith("-") or any(s in name for s in separators):
        raise UsageError(
            f"variant name {name!r} is not a plain folder name (no '/', not '.' or '..', no leading '-'); "
            "name the variant: --variant NAME:FIELD=VALUE"
        )
    return name


def resolve_variant(base: str, fixed: dict[str, Any], variant: Variant, run_dir: Path) -> TrainConfig:
    """The variant's full config. Resolved from the preset each time (not by editing a resolved
    config) so that derived defaults follow the variant: ffn=silu gets d_ff = 4 d_model."""
    overrides = {**fixed, **variant.overrides, "run_dir": str(run_dir)}
    if Path(base).suffix == ".json":
        dataset = read_config_file(Path(base)).get("dataset", "tinystories")
        return resolve_config(dataset, "baseline", overrides, config_file=base)
    dataset, sep, preset = base.partition("/")
    if not sep:
        raise UsageError(f"CONFIG {base!r}: expected DATASET/PRESET (e.g. tinystories/cpu-small) or a .json file")
    return resolve_config(dataset, preset, overrides)


def run_status(run_dir: Path) -> str | None:
    """completed / diverged / interrupted from the run's summary.json; None if it never finished."""
    path = run_dir / SUMMARY_FILE
    return orjson.loads(path.read_bytes())["status"] if path.exists() else None


class Trainers:
    """The training subprocesses of a sweep. A SIGTERM sent to the sweep alone reaches them too
    (Ctrl-C reaches the terminal's whole process group anyway): each saves a checkpoint and stops
    as "interrupted", and no further variant starts, so the next call resumes where this one ended."""

    def __init__(self) -> None:
        self.running: set[subprocess.Popen] = set()
        self.stopping = False
        self.lock = threading.Lock()

    def run(self, command: list[str], **popen_args: Any) -> int | None:
        """The command's exit code, or None when the sweep is stopping and it was not started."""
        with self.lock:
            if self.stopping:
                return None
            process = subprocess.Popen(command, **popen_args)
            self.running.add(process)
        try:
            return process.wait()
        finally:
            with self.lock:
                self.running.discard(process)

    def stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        with self.lock:
            self.stopping = True
            for process in self.running:
                process.send_signal(signal.SIGTERM)


def run_variant(config: TrainConfig, threads: int, log_path: Path, trainers: Trainers) -> str:
    """Train one variant in a subprocess (resuming it when a checkpoint exists); returns its status,
    or "failed" when the trainer died without writing a summary."""
    run_dir = Path(config.run_dir)
    requested = record_request(config)
    command = [sys.executable, "-m", "pipelines.training.cli", config.dataset, "--config", str(requested), "--run_dir", str(run_dir)]
    if checkpoint_path(run_dir).exists():
        command.append("--resume")
    # Torch reads OMP_NUM_THREADS when it starts: runs side by side must not fight over the cores.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_path, "ab") as log:
        returncode = trainers.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if returncode is None:
        return "not started (the sweep was stopped)"
    return run_status(run_dir) or f"failed (exit {returncode}; see {log_path})"


def summarize_run(name: str, run_dir: Path) -> dict[str, Any]:
    """One row of the sweep summary, from the run's metrics.jsonl and summary.json."""
    summary = orjson.loads((run_dir / SUMMARY_FILE).read_bytes()) if (run_dir / SUMMARY_FILE).exists() else {}
    config = orjson.loads((run_dir / CONFIG_FILE).read_bytes()) if (run_dir / CONFIG_FILE).exists() else {}
    rows = read_metrics(run_dir) if (run_dir / METRICS_FILE).exists() else []
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
    train = [r for r in rows if r.get("train_loss") is not None]
    return {
        "name": name,
        "run_dir": str(run_dir),
        "status": summary.get("status", "unfinished"),
        "steps": summary.get("step", train[-1]["step"] if train else 0),
        "tokens": summary.get("tokens", train[-1]["tokens"] if train else 0),
        "batch_size": config.get("data", {}).get("batch_size"),
        "lr": config.get("schedule", {}).get("lr"),
        "parameters": summary.get("parameters"),
        "final_train_loss": train[-1]["train_loss"] if train else None,
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": min(val) if val else None,
        "tokens_per_s": summary.get("tokens_per_s"),
        "wall_s": summary.get("wall", train[-1]["wall"] if train else None),
        "message": summary.get("message", ""),
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep summary as a Markdown table (one line per variant)."""

    def number(value: Any, digits: int = 3) -> str:
        if value is None:
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"

    lines = [
        "| variant | status | lr | batch | steps | tokens | final train | final val | best val | tokens/s | wall (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lr = "–" if row["lr"] is None else f"{row['lr']:.3g}"
        lines.append(
            f"| {row['name']} | {row['status']} | {lr} | {number(row['batch_size'])} | {number(row['steps'])} | {number(row['tokens'])} "
            f"| {number(row['final_train_loss'])} | {number(row['final_val_loss'])} | {number(row['best_val_loss'])} "
            f"| {number(row['tokens_per_s'], 0)} | {number(row['wall_s'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, names: Sequence[str], title: str | None = None) -> list[dict[str, Any]]:
    """summary.json, summary.md and curves.png of the runs `names` under `sweep_dir`."""
    rows = [summarize_run(name, sweep_dir / name) for name in names]
    write_atomic(sweep_dir / SWEEP_SUMMARY_JSON, orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    heading = f"# Sweep {title or sweep_dir.name}\n\n"
    write_atomic(sweep_dir / SWEEP_SUMMARY_MD, heading + markdown_table(rows))
    plotted = [row for row in rows if (Path(row["run_dir"]) / METRICS_FILE).exists()]
    if plotted:
        from pipelines.experiments.plot import plot_runs

        plot_runs([row["run_dir"] for row in plotted], sweep_dir / SWEEP_CURVES, [row["name"] for row in plotted], title)
    return rows


def sweep(
    base: str,
    variants: Sequence[Variant],
    out: Path,
    fixed: dict[str, Any] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    vmap: bool = False,
) -> list[dict[str, Any]]:
    """Train every variant not yet finished under `out` (`jobs` at a time, `threads` torch threads
    each; with `vmap`, as stacked groups in this process when they stack), then write the
    summary; returns its rows."""
    configs = {v.name: resolve_variant(base, fixed or {}, v, out / v.name) for v in variants}  # all errors up front
    out.mkdir(parents=True, exist_ok=True)
    todo = [name for name in configs if run_status(out / name) not in FINISHED]
    for name in configs:
        if name not in todo:
            print(f"{name}: already {run_status(out / name)}, skipped", file=sys.stderr)
    if vmap and todo:
        trained = train_stacked({name: configs[name] for name in todo}, threads)
        todo = [name for name in todo if name not in trained]
    threads = threads or threads_per_variant(None, jobs)[0]

    trainers = Trainers()

    def one(name: str) -> None:
        print(f"{name}: training ({out / name})", file=sys.stderr)
        status = run_variant(configs[name], threads, out / f"{name}.log", trainers)
        print(f"{name}: {status}", file=sys.stderr)

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, trainers.stop) if on_main_thread else None
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, todo))
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return write_summary(out, list(configs), title=out.name)


def threads_per_variant(threads: int | None, jobs: int) -> tuple[int, str]:
    """Torch threads for each variant, and where the number comes from: --threads, else
    OMP_NUM_THREADS (what a shared machine's user sets to say how many cores are theirs), else the
    CPUs shared out among the jobs."""
    if threads is not None:
        return threads, "--threads"
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UsageError(f"OMP_NUM_THREADS={given!r}: expected a positive integer")
        return int(given), f"OMP_NUM_THREADS={given}"
    cpus = os.cpu_count() or 1
    return max(1, cpus // jobs), f"{cpus} CPUs / {jobs} job{'s' if jobs > 1 else ''}"


def parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m pipelines.experiments.sweep",
        description="Train a grid of config variants, resumably, and summarise them.",
        formatter_class=RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("config", help="DATASET/PRESET (e.g. tinystories/cpu-small) or a JSON config file")
    parser.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2", help="a grid axis (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=V[+NAME=V]|base", help="one listed variant (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override for every variant")
    parser.add_argument("--out", type=Path, help="sweep directory (default: runs/sweep-<config name>)")
    parser.add_argument("--jobs", type=processes(), default=1, help="variants trained side by side (default 1)")
    parser.add_argument("--threads", type=integer(1, 4096), help="torch threads per variant (default: $OMP_NUM_THREADS, else CPUs / jobs)")
    parser.add_argument("--vmap", action="store_true",
                        help="train, in this process, each group of variants that differ only in their seed and optimizer "
                             "settings as one stacked model (torch.func.vmap); a variant that stacks with no other runs one by one")
    parser.add_argument("--summary_only", action="store_true", help="rewrite the summary of the runs present; train nothing")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.vmap:
        keep_freed_memory()  # stacked models' buffers: page faults would cost more than the arithmetic
    variants = make_variants(args.vary, args.variant)
    fixed = parse_overrides(args.set)
    out = args.out or Path("runs") / f"sweep-{Path(args.config).stem.replace('/', '-')}"
    if args.summary_only:
        rows = write_summary(out, [v.name for v in variants], title=out.name)
    else:
        # Checked here as well as in sweep(): a refusal must come before the threads line, as the only line.
        for variant in variants:
            resolve_variant(args.config, fixed, variant, out / variant.name)
        threads, source = threads_per_variant(args.threads, args.jobs)
        print(f"sweep: {threads} torch thread{'s' if threads > 1 else ''} per variant ({source}), "
              f"{args.jobs} variant{'s' if args.jobs > 1 else ''} at a time", file=sys.stderr)
        rows = sweep(args.config, variants, out, fixed, args.jobs, threads, vmap=args.vmap)
    print(markdown_table(rows))
    print(f"wrote {out / SWEEP_SUMMARY_MD}, {out / SWEEP_SUMMARY_JSON} and {out / SWEEP_CURVES}")


if __name__ == "__main__":
    sys.exit(main())
