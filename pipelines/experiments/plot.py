"""Learning curves: `python -m pipelines.experiments.plot RUN [RUN ...] [--out FILE.png] [--labels A B ...]`.

Two panels, loss against steps and against wall-clock seconds; each run is one colour, its
training loss a thin line and its validation loss a thicker line with markers.
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from pipelines.training.metrics import read_metrics
from pipelines.training.run_dir import PLOT_FILE


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
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    labels = list(labels) if labels is not None else [Path(run).name for run in run_dirs]
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for index, (run, label) in enumerate(zip(run_dirs, labels)):
        rows = read_metrics(run)
        colour = f"C{index % 10}"
        train = [r for r in rows if r.get("train_loss") is not None]
        valid = [r for r in rows if r.get("val_loss") is not None]
        for axis, x in ((by_step, "step"), (by_time, "wall")):
            axis.plot([r[x] for r in train], [r["train_loss"] for r in train], color=colour, lw=0.8, alpha=0.6,
                      label=f"{label} train")
            axis.plot([r[x] for r in valid], [r["val_loss"] for r in valid], color=colour, lw=1.8, marker="o",
                      ms=3, label=f"{label} val")
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall-clock seconds")
    by_step.set_ylabel("loss (nats per token)")
    for axis in (by_step, by_time):
        axis.grid(alpha=0.3)
    by_time.legend(fontsize="small", loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments.plot", description="Draw learning curves of runs to PNG.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", type=Path, help="PNG path (default: RUN/plots/loss.png for one run, plots/loss.png otherwise)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the run directory names)")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    out = args.out or (args.runs[0] / PLOT_FILE if len(args.runs) == 1 else Path("plots") / "loss.png")
    try:
        path = plot_runs(args.runs, out, args.labels, args.title)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
