"""Generate the tables and figures of the experiment log from sweep directories:

    python -m pipelines.experiments.experiment_log runs/study/lr runs/study/batch --out runs/study/log.md --figures runs/study/figures

By default it writes under runs/ (runs/experiment-log/experiments.md and figures/); the project's
own docs/experiments.md is regenerated only when named: `--out docs/experiments.md --figures docs/figures`.

For each sweep directory (made by pipelines/experiments/sweep.py) it writes a section with the sweep's summary
table and a validation-loss figure (against steps, tokens and wall-clock seconds; y-axis clipped
so that a divergent run does not flatten the others) into the `--figures` folder, then the samples
of the run with the lowest validation loss. The result replaces whatever lies between the markers

    <!-- experiment-log:start -->  ...  <!-- experiment-log:end -->

in `--out` (appended when the file has none), so the narrative written around them is kept. Any
other arrangement of the markers (one without the other, the end before the start, two of
either) is refused in one line and the file left as it is: text between stray markers is the
user's, not ours to replace.
With `--section NAME` the markers are `<!-- experiment-log:NAME:start -->` and
`<!-- experiment-log:NAME:end -->`, so one file holds several generated sections, each rewritten
by its own command.
"""

import math
import os
import sys
from argparse import RawDescriptionHelpFormatter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from core.errors import UsageError
from pipelines.command import command
from pipelines.files.atomic import open_atomic, write_atomic
from pipelines.flags import CommandParser
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.storage.run_dir import METRICS_FILE, SAMPLES_FILE
from pipelines.experiments.sweep import SWEEP_SUMMARY_JSON, check_run_name, markdown_table, summarize_run

START, END = "<!-- experiment-log:start -->", "<!-- experiment-log:end -->"
# Under runs/ (ignored by git): regenerating the project's own docs/ is asked for by name.
DEFAULT_OUT = Path("runs") / "experiment-log" / "experiments.md"
DEFAULT_FIGURES = Path("runs") / "experiment-log" / "figures"


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's rows, re-read from its runs (so a log made mid-sweep is current), in the order
    of its summary.json when there is one, else by name."""
    if not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} is not a folder (expected a sweep directory from `just sweep`)")
    if (sweep_dir / METRICS_FILE).exists():
        raise UsageError(f"{sweep_dir} is a run directory, not a sweep directory: pass the folder that holds the sweep's runs")
    path = sweep_dir / SWEEP_SUMMARY_JSON
    names = sweep_names(path) if path.exists() else sorted(p.name for p in sweep_dir.iterdir() if (p / METRICS_FILE).exists())
    if not names:
        raise UsageError(f"{sweep_dir} holds no runs (no */metrics.jsonl) and no {SWEEP_SUMMARY_JSON}")
    return [summarize_run(name, sweep_dir / name) for name in names]


def sweep_names(path: Path) -> list[str]:
    """The run names a sweep's summary.json lists, checked to be one: a list of rows, each with a
    plain folder name."""
    try:
        rows = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error}); rewrite it with `just sweep ... --summary_only`") from None
    if not (isinstance(rows, list) and all(isinstance(row, dict) and isinstance(row.get("name"), str) for row in rows)):
        raise UsageError(f"{path} is not a sweep summary (a list of rows with a 'name' each); "
                         "rewrite it with `just sweep ... --summary_only`")
    return [check_run_name(row["name"]) for row in rows]


def plot_validation(rows: Sequence[dict[str, Any]], out_png: Path, title: str) -> Path:
    """Validation loss of each run against steps, tokens and wall-clock seconds, on a log scale
    clipped at most 8 nats above the best final loss, so divergent runs show as curves leaving
    the top (their last point marked x) without flattening the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    colours = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
    finals, highest = [], 0.0
    for index, row in enumerate(rows):
        if not (Path(row["run_dir"]) / METRICS_FILE).exists():
            continue
        valid = [r for r in read_metrics(row["run_dir"]) if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
        if not valid:
            continue
        finals.append(valid[-1]["val_loss"])
        highest = max(highest, *(r["val_loss"] for r in valid))
        label = row["name"] + (" (diverged)" if row["status"] == "diverged" else "")
        for axis, x in zip(axes, ("step", "tokens", "wall")):
            axis.plot([r[x] for r in valid], [r["val_loss"] for r in valid], color=colours(index), marker="o", ms=3,
                      label=label if axis is axes[0] else None)
            if row["status"] == "diverged":
                axis.plot(valid[-1][x], valid[-1]["val_loss"], "kx", ms=9)
    if finals:
        low = min(finals)
        axes[0].set_yscale("log")
        axes[0].set_ylim(low * 0.97, min(highest * 1.05, low + 8))
    for axis, label in zip(axes, ("step", "tokens", "wall-clock seconds")):
        axis.set_xlabel(label)
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("validation loss (nats/token, log scale)")
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    with open_atomic(out_png) as f:  # a kill mid-write leaves the previous figure, not a truncated one
        fig.savefig(f, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return out_png


def log_section(sweep_dirs: Sequence[Path], out: Path, figures: Path) -> str:
    """The generated Markdown: one subsection per sweep, then the best run's samples. Every sweep
    is read before any figure is drawn, so a bad one stops the command with nothing written."""
    rows_by_sweep = {sweep_dir: sweep_rows(sweep_dir) for sweep_dir in sweep_dirs}
    parts, everything = [], []
    for sweep_dir, rows in rows_by_sweep.items():
        everything += rows
        png = plot_validation(rows, figures / f"{sweep_dir.name}.png", f"{sweep_dir.name}: validation loss")
        parts += [
            f"### {sweep_dir.name}",
            "",
            f"`{sweep_dir}` — losses in nats per token; tokens/s measured during training.",
            "",
            markdown_table(rows),
            f"![{sweep_dir.name}]({os.path.relpath(png, out.parent)})",
            "",
        ]
    scored = [row for row in everything if row["best_val_loss"] is not None and row["status"] == "completed"]
    if scored:
        best = min(scored, key=lambda row: row["final_val_loss"])
        samples = Path(best["run_dir"]) / SAMPLES_FILE
        parts += [
            "### Samples of the best run",
            "",
            f"`{best['run_dir']}`: final validation loss {best['final_val_loss']:.3f}. "
            + ("Its end-of-training samples (`samples.txt`):" if samples.exists() else "It wrote no samples."),
            "",
        ]
        if samples.exists():
            parts += ["```text", samples.read_text(encoding="utf-8").strip(), "```", ""]
    return "\n".join(parts)


def markers(name: str | None = None) -> tuple[str, str]:
    """The start and end markers of the generated section `name` (None: the unnamed one)."""
    if name is None:
        return START, END
    if not name or any(c.isspace() for c in name) or "--" in name or ">" in name:
        raise UsageError(f"--section {name!r}: use a plain name such as 'leaderboard' (no spaces, '--' or '>')")
    return f"<!-- experiment-log:{name}:start -->", f"<!-- experiment-log:{name}:end -->"


def write_log(out: Path, section: str, name: str | None = None) -> None:
    """Put `section` between the markers (of section `name`) in `out`, keeping the text around them."""
    start, end = markers(name)
    block = f"{start}\n<!-- generated by `python -m pipelines.experiments.experiment_log`; edits here are overwritten -->\n\n{section}\n{end}"
    text = read_log(out, name)
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text + ("\n\n" if text else "") + block + "\n"
    write_atomic(out, text)


def read_log(out: Path, name: str | None = None) -> str:
    """The text of `out` ("" when it does not exist), refused unless its markers of section `name`
    are absent or one well-formed pair: start, then end, once each."""
    if not out.exists():
        return ""
    try:
        text = out.read_bytes().decode("utf-8")  # bytes as they are: no newline translation outside the markers
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--out {out}: cannot read it as UTF-8 text ({error})") from None
    start, end = markers(name)
    starts, ends = text.count(start), text.count(end)
    if (starts, ends) == (0, 0) or ((starts, ends) == (1, 1) and text.index(start) < text.index(end)):
        return text
    raise UsageError(f"--out {out}: its {start} / {end} markers are not one pair in order (found {starts} start, "
                     f"{ends} end{', end first' if starts == ends == 1 else ''}); fix them by hand, the file is unchanged")


def parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m pipelines.experiments.experiment_log", description=__doc__.split("\n\n")[0],
        formatter_class=RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep directories (from pipelines.experiments.sweep)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown file to update (default {DEFAULT_OUT})")
    parser.add_argument("--figures", type=Path, default=DEFAULT_FIGURES, help=f"folder for the PNGs (default {DEFAULT_FIGURES})")
    parser.add_argument("--section", help="the name of the generated section to rewrite (default: the unnamed one)")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    read_log(args.out, args.section)  # bad markers or a bad name fail before any work
    write_log(args.out, log_section(args.sweeps, args.out, args.figures), args.section)
    print(f"updated {args.out} ({len(args.sweeps)} sweeps; figures in {args.figures})")


if __name__ == "__main__":
    sys.exit(main())
