"""A run's metrics: one JSON object per line in run_dir/metrics.jsonl, optionally mirrored to W&B.

Training rows carry step, tokens, wall, train_loss, lr, grad_norm, tokens_per_s, flops_per_s and
mfu (model FLOPs utilisation: core/accounting.py's FLOPs per step against the device's peak);
evaluation rows carry step, tokens, wall, val_loss. A resumed run appends to the same file.

A crash mid-write can leave a torn last line: readers skip it, and opening the log for a resumed
run cuts it off first, so the new rows do not land on the end of half a row. A run killed after
its last checkpoint logged steps that the resumed run takes again: opening the log at the
checkpoint's step cuts the rows after it, so each kind of row (training, evaluation) has strictly
increasing steps in the file, whatever was killed when.
"""

import os
from pathlib import Path
from typing import Any

import orjson

from core.errors import UsageError
from pipelines.files.atomic import write_atomic
from pipelines.training.storage.run_dir import METRICS_FILE


class MetricsLog:
    def __init__(self, run_dir: Path, wandb_run: Any = None, *, step: int | None = None) -> None:
        """The log of the run in `run_dir`, starting (or resuming) at `step`: rows after it are cut."""
        repair_metrics(run_dir)
        if step is not None:
            cut_metrics(run_dir, step)
        # Unbuffered, appending: each row goes to the file in one write call, so nothing of it
        # waits in a buffer to be lost in a crash, and a plot of a live run sees every row.
        self._file = open(run_dir / METRICS_FILE, "ab", buffering=0)
        self._wandb_run = wandb_run

    def write(self, row: dict[str, Any]) -> None:
        line = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        written = self._file.write(line)
        while written < len(line):  # a short write (a disk filling up): the rest, or the error
            written += self._file.write(line[written:])
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a run's metrics.jsonl, a torn last line skipped. A file written before resumes
    cut their rows (cut_metrics) may hold some steps twice; the later row of a step wins."""
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
                if not line.endswith(b"\n"):  # the last line, and the run died writing it
                    continue
                raise UsageError(f"{path}:{number} is not valid JSON: {error}") from error
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise UsageError(f"{path}:{number} is not a metrics row (an object with an integer 'step')")
            kind = "val" if "val_loss" in row else "train"
            rows[(row["step"], kind)] = row
    return sorted(rows.values(), key=lambda row: row["step"])


def repair_metrics(run_dir: str | os.PathLike) -> bool:
    """Make metrics.jsonl end with a whole row before anything is appended to it: a last line that
    is not valid JSON (a crash cut it) is removed; a valid one that only lacks its newline gets it.
    Returns whether the file changed."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return False
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1  # where the last line begins
    last = data[start:]
    if not last.strip() or (last.endswith(b"\n") and _is_json(last)):
        return False
    with open(path, "r+b") as f:
        if _is_json(last):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)
        os.fsync(f.fileno())
    return True


def cut_metrics(run_dir: str | os.PathLike, step: int) -> bool:
    """Remove the rows after `step` from metrics.jsonl (rewritten whole, pipelines/files/atomic.py):
    those of a run killed after its last checkpoint, which the resumed run logs again. Lines that
    are not metrics rows are kept for read_metrics to name. Returns whether the file changed."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return False
    lines = path.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if not _after(line, step)]
    if len(kept) == len(lines):
        return False
    write_atomic(path, b"".join(kept))
    return True


def _after(line: bytes, step: int) -> bool:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


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
