"""Tiny training runs as the tests drive them: the settings, the data, the command line, and
waiting on a trainer that runs in another process."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from core.tokenizer import Tokenizer
from pipelines.tokenizer.store import save_tokenizer
from pipelines.training.config.config import TrainConfig, resolve_config
from pipelines.training.storage.run_dir import METRICS_FILE
from tests.inputs import EOT

# A model and a schedule small enough that a run of tens of steps takes seconds, over `token_data`.
TINY = {
    "model.vocab_size": 32, "model.context_length": 16, "model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2,
    "data.batch_size": 8, "schedule.warmup_steps": 2, "log_every": 5, "eval.every": 10, "eval.windows": 8,
    "checkpoint_every": 10, "sample.count": 0,
}


def token_data(directory: Path, vocab: int = 32, *, byte_tokenizer: bool = False) -> Path:
    """train.npy / valid.npy under `directory`: a seeded 24-token pattern, repeated 200 and 20 times,
    so the next token is learnable and a run's loss falls. With `byte_tokenizer`, a tokenizer of
    the 256 bytes and EOT beside them (vocab 256), so a finished run can write samples."""
    pattern = np.random.default_rng(0).integers(0, vocab, 24)
    directory.mkdir()
    np.save(directory / "train.npy", np.tile(pattern, 200).astype(np.uint16))
    np.save(directory / "valid.npy", np.tile(pattern, 20).astype(np.uint16))
    if byte_tokenizer:
        save_tokenizer(Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT]), directory / "tokenizer")
    return directory


def tiny_config(data: Path, run_dir: Path, overrides: dict | None = None) -> TrainConfig:
    return resolve_config("tinystories", "cpu-small", {**TINY, "data.path": str(data), "run_dir": str(run_dir), **(overrides or {})})


# The trainer's command run in a process of its own; its arguments follow.
TRAINER = [sys.executable, "-m", "pipelines.training.cli"]


def trainer_argv(data: Path, run_dir: Path, settings: dict, *extra: str) -> list[str]:
    """The trainer's arguments (what follows TRAINER, what its main() takes) on the TinyStories
    cpu-small preset with `settings` set, then `extra`."""
    return ["tinystories", "--preset", "cpu-small", "--data.path", str(data), "--run_dir", str(run_dir),
            *[f"--set={k}={v}" for k, v in settings.items()], *extra]


def trainer_command(data: Path, run_dir: Path, settings: dict, *extra: str) -> list[str]:
    """The trainer's command line: TRAINER and trainer_argv's arguments."""
    return [*TRAINER, *trainer_argv(data, run_dir, settings, *extra)]


def wait_for_progress(process: subprocess.Popen, run_dir: Path, rows: int = 1, timeout: float = 120.0) -> None:
    """Until the trainer has logged `rows` new metrics rows (it is past its start-up and training),
    or ended."""
    metrics = run_dir / METRICS_FILE
    before = metrics.read_bytes().count(b"\n") if metrics.exists() else 0
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= before + rows):
        if process.poll() is not None:  # finished (or failed: the caller checks the exit code)
            return
        assert time.monotonic() < deadline, "the trainer made no progress"
        time.sleep(0.02)


def process_stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the process's name: state, ppid, ... (OSError where the
    process is gone)."""
    # "pid (name) state ppid ...": the name may hold spaces and parentheses, so read after the last ')'.
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(process_stat(entry.name)[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
