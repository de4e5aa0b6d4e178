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

A file being written is first `.NAME.tmpPID` beside NAME (pipelines/files/atomic.py).
"""

from pathlib import Path

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
