"""Writing a run's files whole or not at all, and clearing what a killed writer left behind.

A file is written to a temporary `.NAME.tmpPID` beside it, flushed to disk, then renamed over
NAME: a crash or a full disk mid-write leaves the previous NAME intact, never a truncated one.
A `kill -9` mid-write leaves the temporary, which `remove_stale_temporaries` clears on the next
start of the run.
"""

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_TEMPORARY = re.compile(r"\..+\.tmp\d+")


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` when the block ends without an error; on an error the
    temporary is removed, `path` is left as it was, and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # makes the rename itself durable
    finally:
        os.close(directory)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` by `data`, whole or not at all (for summary.json, config.json)."""
    with open_atomic(path) as f:
        f.write(data)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete every temporary under `run_dir` and return their paths. Call it only while holding
    the run's lock (pipelines/training/storage/run_lock.py): the lock proves that no other process is
    writing here, so each temporary is the leftover of a killed writer. (Judging by whether the
    PID in the name is alive would not do: in a container a restarted trainer often gets the PID
    of the one that was killed.)"""
    stale = [path for path in Path(run_dir).rglob(".*.tmp*") if _TEMPORARY.fullmatch(path.name) and not path.is_dir()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
