"""Learning curves: `python -m pipelines.experiments.plot RUN [RUN ...] [--out FILE.png] [--labels A B ...]`.

Two panels, loss against steps and against wall-clock seconds; each run is one colour, its
training loss a thin line and its validation loss a thicker line with markers. Runs trained with
`--gns true` get a third panel: the gradient noise scale B_simple (core/gns.py) against steps.

Without --out the figure goes beside what it draws, never into the working tree: RUN/plots/loss.png
for one run, FOLDER/plots/loss.png for runs that share a folder (a sweep's), else runs/plots/.
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import UsageError
from pipelines.command import command
from pipelines.files.atomic import open_atomic
from pipelines.flags import CommandParser
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.storage.run_dir import METRICS_FILE, PLOT_FILE


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Overlay the train and validation curves of `run_dirs` in one PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none assumed
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(run_dirs):
        raise UsageError(f"--labels: {len(labels)} labels for {len(run_dirs)} runs")
    labels = list(labels) if labels is not None else [Path(run).name for run in run_dirs]
    rows_by_run = [read_metrics(run) for run in run_dirs]
    noise = any(r.get("gns_b_simple") is not None for rows in rows_by_run for r in rows)
    fig, axes = plt.subplots(1, 3 if noise else 2, figsize=(19.5 if noise else 13, 4.8))
    by_step, by_time = axes[0], axes[1]
    by_time.sharey(by_step)
    by_time.tick_params(labelleft=False)
    for index, (rows, label) in enumerate(zip(rows_by_run, labels)):
        colour = f"C{index % 10}"
        train = [r for r in rows if r.get("train_loss") is not None]
        valid = [r for r in rows if r.get("val_loss") is not None]
        for axis, x in ((by_step, "step"), (by_time, "wall")):
            axis.plot([r[x] for r in train], [r["train_loss"] for r in train], color=colour, lw=0.8, alpha=0.6,
                      label=f"{label} train")
            axis.plot([r[x] for r in valid], [r["val_loss"] for r in valid], color=colour, lw=1.8, marker="o",
                      ms=3, label=f"{label} val")
        if noise:
            _draw_noise_scale(axes[2], rows, colour, label)
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall-clock seconds")
    by_step.set_ylabel("loss (nats per token)")
    for axis in axes:
        axis.grid(alpha=0.3)
    by_time.legend(fontsize="small", loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    with open_atomic(out) as f:  # a kill mid-write leaves the previous figure, not a truncated one
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return out


def _draw_noise_scale(axis, rows: list[dict], colour: str, label: str) -> None:
    """B_simple, in sequences, on a log scale (it changes by large factors as training goes on);
    rows whose |G|² average was not yet positive hold None and are skipped."""
    points = [(r["step"], r["gns_b_simple"]) for r in rows if r.get("gns_b_simple") is not None and r["gns_b_simple"] > 0]
    axis.plot([step for step, _ in points], [b for _, b in points], color=colour, lw=1.5, label=label)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("gradient noise scale B_simple (sequences)")
    axis.legend(fontsize="small")


def default_out(runs: Sequence[Path]) -> Path:
    """Where a plot goes without --out (see the module's docstring)."""
    if len(runs) == 1:
        return runs[0] / PLOT_FILE
    shared = Path(os.path.commonpath([run.resolve() for run in runs]))
    if shared in (Path.cwd(), *Path.cwd().parents):  # no folder of their own: runs/ is ignored by git
        return Path("runs") / PLOT_FILE
    return shared / PLOT_FILE


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m pipelines.experiments.plot", description="Draw learning curves of runs to PNG.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", type=Path, help="PNG path (default: RUN/plots/loss.png for one run, "
                                                 "FOLDER/plots/loss.png for runs in one folder, else runs/plots/loss.png)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the run directory names)")
    parser.add_argument("--title")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for run in args.runs:
        if not (run / METRICS_FILE).is_file():
            raise UsageError(f"{run} is not a run directory: it has no {METRICS_FILE}")
    path = plot_runs(args.runs, args.out or default_out(args.runs), args.labels, args.title)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
