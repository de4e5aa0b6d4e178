"""A run's metrics: one JSON object per line in run_dir/metrics.jsonl, optionally mirrored to W&B.

Training rows carry step, tokens, wall, train_loss, lr, grad_norm, tokens_per_s, flops_per_s and
mfu (model FLOPs utilisation: core/accounting.py's FLOPs per step against the device's peak);
evaluation rows carry step, tokens, wall, val_loss. A resumed run appends to the same file.
"""

import os
from pathlib import Path
from typing import Any

import orjson

from pipelines.training.run_dir import METRICS_FILE


class MetricsLog:
    def __init__(self, run_dir: Path, wandb_run: Any = None) -> None:
        self._file = open(run_dir / METRICS_FILE, "ab")
        self._wandb_run = wandb_run

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._file.flush()  # a crash or a plot of a live run sees every row written so far
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a run's metrics.jsonl. A resumed run may have logged some steps twice (after
    its last checkpoint and before the interruption); the later row of a step wins."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                if number > 1 and not line.endswith(b"\n"):  # the run died mid-write: ignore that row
                    continue
                raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
            kind = "val" if "val_loss" in row else "train"
            rows[(row["step"], kind)] = row
    return sorted(rows.values(), key=lambda row: row["step"])


def import_wandb() -> Any:
    """The wandb module, or a clear error saying how to get it."""
    try:
        import wandb
    except ImportError as error:
        raise ImportError(
            "--wandb needs the wandb package: pip install wandb (or pip install -e '.[wandb]'); "
            "set WANDB_MODE=offline to log without a network and `wandb sync` later"
        ) from error
    return wandb


def start_wandb(wandb: Any, project: str, run_dir: Path, config: dict[str, Any]) -> Any:
    """A W&B run logging into `run_dir`; honours WANDB_MODE (e.g. offline)."""
    return wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config)
