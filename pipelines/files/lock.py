"""One writer per output: an OS lock (`flock`) held for as long as a command writes something.

The OS drops a `flock` with the process that holds it, so a `kill -9` or a crash frees the output
and no stale lock is ever left to clear by hand. The lock file records who holds it (pid, host,
start time, command line), so a second writer's message names the first.

`hold(path)` locks the output `path` (a file or a folder, present or not) through `.NAME.lock`
beside it, removed again on release. A second writer waits for the first, then reuses or refuses
what it made (`Lock.waited` tells it to look). To refuse at once instead, lock with
`acquire(lock_path(path), on_busy=..., remove=True)` and an `on_busy` that raises, as the run
directory's own `RUN/.lock` does (pipelines/training/storage/run_lock.py, with `remove=False`).

POSIX only (Linux, macOS), where `fcntl` exists. Elsewhere nothing is locked and a warning says
so. On network file systems `flock` is only as good as the server's locking.
"""

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import orjson

from core.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class Busy(UsageError):
    """Another live process holds the lock."""


class Lock:
    """A held lock; `release()` or leaving a `with` block frees it. `waited`: whether another
    process held it when it was asked for, so that what it guards may have changed meanwhile."""

    def __init__(self, path: Path, fd: int | None, *, waited: bool, remove: bool) -> None:
        self.path, self._fd, self.waited, self._remove = path, fd, waited, remove

    def release(self) -> None:
        if self._fd is not None:
            if self._remove:
                # Unlinked while still held: a waiter on this file finds it gone and locks anew.
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def lock_path(output: Path) -> Path:
    """The lock file of the output `output`: `.NAME.lock` beside it."""
    return output.with_name(f".{output.name}.lock")


def hold(output: str | os.PathLike, *, announce: bool = True) -> Lock:
    """Lock the output `output` for this process, waiting while another holds it (saying so on
    stderr once, unless not `announce`). Its folder is created if needed."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)

    def waiting(holder: str) -> None:
        if announce:
            print(f"waiting for {holder}, which is writing {output}", file=sys.stderr, flush=True)

    return acquire(lock_path(output), on_busy=waiting, remove=True)


def acquire(path: Path, *, on_busy: Callable[[str], None], remove: bool) -> Lock:
    """Lock the file `path` (created if absent). When another process holds it, `on_busy(holder)`
    is called with the holder's description: it raises to refuse, or returns to wait. With
    `remove`, the file is deleted on release (else it stays, as RUN/.lock does)."""
    if fcntl is None:
        print(f"warning: no fcntl on this platform: {path} does not lock out a second writer", file=sys.stderr)
        return Lock(path, None, waited=False, remove=False)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                on_busy(holder_of(path))
            except BaseException:
                os.close(fd)
                raise
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):  # not a file its last holder removed on release
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, orjson.dumps(_holder()) + b"\n")
    return Lock(path, fd, waited=waited, remove=remove)


def check_free(path: Path, on_busy: Callable[[str], None]) -> None:
    """Call `on_busy(holder)` if a live process holds the lock file `path`; creates nothing."""
    if fcntl is None or not path.exists():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # released and removed in the meantime
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        on_busy(holder_of(path))
    finally:
        os.close(fd)


def holder_of(path: Path) -> str:
    """Who holds the lock file `path`, in words, on one line."""
    try:
        holder = orjson.loads(path.read_bytes())
        command = " ".join(str(holder["command"]).split())  # one line, whatever the command held
        return f"pid {holder['pid']} on host {holder['host']} since {holder['since']} ({command})"
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return "another process"  # the holder locked the file and has not yet written its name


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(sys.orig_argv),
    }
