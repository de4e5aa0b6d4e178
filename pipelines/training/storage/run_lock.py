"""One run directory, one writer: an OS lock on RUN/.lock held for the life of the run.

Two trainers on the same directory would interleave their metrics and overwrite each other's
checkpoints. The lock is `flock` on RUN/.lock, which the OS drops with the process that holds it:
a `kill -9` or a crash frees the directory, and no stale lock is ever left to clear by hand. The
file records who holds it (pid, host, start time, command line), so the second writer's error
names the first.

POSIX only (Linux, macOS), where `fcntl` exists. Elsewhere the directory is not locked and a
warning says so: training still works, with nothing stopping a second writer. On network file
systems `flock` is only as good as the server's locking (Linux maps it to NFS byte-range locks).
"""

import os
import shlex
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

import orjson

from pipelines.training.storage.run_dir import LOCK_FILE

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class RunDirBusy(OSError):
    """Another live process holds the run directory."""


class RunLock:
    """A held lock on a run directory; `release()` or leaving a `with` block frees it."""

    def __init__(self, run_dir: Path, fd: int | None) -> None:
        self.run_dir, self._fd = run_dir, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def lock_run_dir(run_dir: str | os.PathLike) -> RunLock:
    """Lock the existing directory `run_dir` for this process, or raise RunDirBusy at once (no
    waiting) naming the holder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot lock run directory {run_dir}: it does not exist")
    if fcntl is None:
        print(f"warning: no fcntl on this platform: {run_dir} is not locked against a second writer", file=sys.stderr)
        return RunLock(run_dir, None)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(_busy_message(run_dir)) from None
    os.ftruncate(fd, 0)
    os.write(fd, orjson.dumps(_holder()) + b"\n")
    return RunLock(run_dir, fd)


def check_run_dir_free(run_dir: str | os.PathLike) -> None:
    """Raise RunDirBusy if a live process holds `run_dir`; creates nothing, so it can run before
    any work, even before the directory exists. The answer can change the moment after: the
    lock itself is only taken by `lock_run_dir`."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirBusy(_busy_message(Path(run_dir))) from None
    finally:
        os.close(fd)


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(sys.orig_argv),
    }


def _busy_message(run_dir: Path) -> str:
    try:
        holder = orjson.loads((run_dir / LOCK_FILE).read_bytes())
        command = " ".join(str(holder["command"]).split())  # one line, whatever the command held
        who = f"pid {holder['pid']} on host {holder['host']} since {holder['since']} ({command})"
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        who = "another process"  # the holder locked the file and has not yet written its name
    return f"{run_dir} is in use by {who}; two runs cannot write to one directory"
