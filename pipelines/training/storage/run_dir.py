"""The layout of a run directory, shared by everything that writes or reads one.

    RUN/config.json        the resolved TrainConfig (model included)
    RUN/metrics.jsonl      one row per log or evaluation (pipelines/training/storage/metrics.py)
    RUN/checkpoints/       last.pt (latest, overwritten) and final.pt (end of a completed run)
    RUN/tokenizer/         a copy of the tokenizer that encoded the data, when known
    RUN/samples.txt        stories sampled at the end of training
    RUN/summary.json       status (completed / interrupted / diverged), final losses, throughput
    RUN/sweep_config.json  the config a sweep asked this run for (runs started by a sweep only)
    RUN/plots/loss.png     learning curves, when `just plot RUN` drew them
    RUN/.lock              held by the run's process while it runs (pipelines/training/storage/run_lock.py)

A file or folder being written is first `.NAME.tmpPID-RANDOM` beside NAME (pipelines/files/atomic.py);
RUN/.tokenizer.lock exists while a process copies the tokenizer in (pipelines/files/lock.py).
"""

import shutil
from pathlib import Path

from pipelines.files.atomic import is_temporary

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SWEEP_CONFIG_FILE = "sweep_config.json"
PLOT_FILE = Path("plots") / "loss.png"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.txt"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
LAST, FINAL = "last.pt", "final.pt"


def checkpoint_path(run_dir: str | Path, name: str = LAST) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / name


def remove_if_unstarted(run_dir: str | Path) -> bool:
    """Delete `run_dir` when it holds only what a start writes before the first step (config.json,
    an empty metrics.jsonl, tokenizer/, locks, temporaries), so that a start that fails leaves no
    run directory behind; returns whether it did. Anything else keeps it: a checkpoint, a metrics
    row, a sweep's request, a file of the user's. Call it holding the run's lock."""
    run_dir = Path(run_dir)
    leftovers = {CONFIG_FILE, METRICS_FILE, TOKENIZER_DIR, LOCK_FILE, f".{TOKENIZER_DIR}.lock"}
    for path in run_dir.iterdir():
        if path.name == METRICS_FILE and path.stat().st_size > 0:
            return False
        if path.name not in leftovers and not is_temporary(path.name):
            return False
    shutil.rmtree(run_dir)
    return True
