"""One run directory, one writer: an OS lock on RUN/.lock held for the life of the run.

Two trainers on the same directory would interleave their metrics and overwrite each other's
checkpoints. The lock is pipelines/files/lock.py's `flock`, on RUN/.lock (which stays: it is the run's
record of who last held it). The OS drops it with the process that holds it: a `kill -9` or a
crash frees the directory. A second trainer is refused at once, with the holder's pid, host,
start time and command; it does not wait, since a run may last days.
"""

import os
from pathlib import Path

from pipelines.files.lock import Busy, Lock, acquire, check_free
from pipelines.training.storage.run_dir import LOCK_FILE


class RunDirBusy(Busy):
    """Another live process holds the run directory."""


RunLock = Lock


def lock_run_dir(run_dir: str | os.PathLike) -> RunLock:
    """Lock the existing directory `run_dir` for this process, or raise RunDirBusy at once (no
    waiting) naming the holder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot lock run directory {run_dir}: it does not exist")
    return acquire(run_dir / LOCK_FILE, on_busy=_refuse(run_dir), remove=False)


def check_run_dir_free(run_dir: str | os.PathLike) -> None:
    """Raise RunDirBusy if a live process holds `run_dir`; creates nothing, so it can run before
    any work, even before the directory exists. The answer can change the moment after: the
    lock itself is only taken by `lock_run_dir`."""
    check_free(Path(run_dir) / LOCK_FILE, _refuse(Path(run_dir)))


def _refuse(run_dir: Path):
    def refuse(holder: str) -> None:
        raise RunDirBusy(f"{run_dir} is in use by {holder}; two runs cannot write to one directory")
    return refuse
