"""The layout of a run directory, shared by everything that writes or reads one.

    RUN/config.json        the resolved TrainConfig (model included)
    RUN/metrics.jsonl      one row per log or evaluation (pipelines/training/metrics.py)
    RUN/checkpoints/       last.pt (latest, overwritten) and final.pt (end of a completed run)
    RUN/tokenizer/         a copy of the tokenizer that encoded the data, when known
    RUN/samples.txt        stories sampled at the end of training
    RUN/summary.json       status (completed / interrupted / diverged), final losses, throughput
"""

from pathlib import Path

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.txt"
TOKENIZER_DIR = "tokenizer"
LAST, FINAL = "last.pt", "final.pt"


def checkpoint_path(run_dir: str | Path, name: str = LAST) -> Path:
    return Path(run_dir) / "checkpoints" / name
