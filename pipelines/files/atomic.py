"""Writing files and folders whole or not at all, and clearing what a killed writer left behind.

Every file and folder the project keeps and writes whole goes through here; only files written a
piece at a time do not (a run's metrics.jsonl and logs, appended to; a download's .part, kept for
the next run to resume). A file is written to a temporary beside it, flushed and fsynced, then
renamed over NAME, and the folder is fsynced so that the rename itself survives a power cut: a
crash or a full disk mid-write leaves the previous NAME intact, never a truncated one. A second
name of a file (`link_atomic`) is a hard link made and renamed the same way. A folder is built
under a temporary name beside it, its files fsynced, then renamed into place: a folder that exists
is a complete one.

Every temporary is named `.NAME.tmpPID-RANDOM` (`temporary_path`), unique per writer even when
two processes with one PID (containers) or two threads write the same NAME. A `kill -9`
mid-write leaves the temporary; `remove_stale_temporaries` clears them, called only by a writer
that holds the lock on what it writes (pipelines/files/lock.py), which proves no writer is alive.
"""

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core.errors import UsageError

# `.NAME.tmpPID-RANDOM`; the `-RANDOM` is optional so the debris of older versions (`.NAME.tmpPID`) is cleared too.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp\d+(?:-[0-9a-f]{8})?")
# Errors that say the disk, not the program, stopped the write: named with the file in one line.
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def temporary_path(path: Path) -> Path:
    """A fresh name beside `path` for writing it (or building it, for a folder) before the rename."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(name: str, of: str | None = None) -> bool:
    """Whether `name` is a temporary `temporary_path` makes (of the file or folder `of`, if given)."""
    match = _TEMPORARY.fullmatch(name)
    return match is not None and (of is None or match["name"] == of)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` when the block ends without an error; on an error the
    temporary is removed, `path` is left as it was, and the error propagates (an OSError with
    `path` as its filename when the disk was full)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with _naming(path), open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace `path` by `data` (text is written as UTF-8), whole or not at all."""
    with open_atomic(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """`path` becomes a second name of `source`'s file (one file on disk, not a copy), replacing
    what was there at once; a copy, written as `open_atomic` writes, where the file system has no
    hard links. A later atomic write of `source` renames a new file over it and leaves `path` as it
    was. On an error `path` is left as it was and no temporary stays behind."""
    source, path = Path(source), Path(path)
    tmp = temporary_path(path)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here
        with open(source, "rb") as reading, open_atomic(path) as writing:
            shutil.copyfileobj(reading, writing)  # streamed: a checkpoint need not fit in memory
        return
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)  # makes the new name durable


@contextlib.contextmanager
def build_folder(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside `path` to fill; when the block ends without an error, its
    files are fsynced and it is renamed to `path`. `path` may be absent or an empty folder; with
    `replace`, a folder there is swapped out and deleted (between the two renames, `path` is
    briefly absent, never partial). On an error the temporary is deleted and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.mkdir()
    try:
        with _naming(path):
            yield tmp
            for name in os.listdir(tmp):
                fsync_path(tmp / name)
            fsync_path(tmp)
        _rename_folder(tmp, path, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_path(path.parent)


def _rename_folder(tmp: Path, path: Path, replace: bool) -> None:
    """Rename the built folder `tmp` to `path`, over an empty folder, or (`replace`) over any."""
    try:
        os.rename(tmp, path)  # replaces an empty folder; fails on one with files in it
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if not replace:
            raise FileExistsError(f"{path} already exists and is not empty") from None
    old = temporary_path(path)  # a temporary name: a kill before the rmtree leaves debris that is cleared
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def copy_folder(source: Path, target: Path, *, replace: bool = False) -> Path:
    """Copy the files of the folder `source` as the folder `target`, whole or not at all (over a
    folder already there only with `replace`)."""
    with build_folder(target, replace=replace) as tmp:
        for item in sorted(source.iterdir()):
            if item.is_file():
                shutil.copyfile(item, tmp / item.name)
    return target


def fsync_path(path: Path) -> None:
    """Flush `path` to disk: a file's contents, or a folder's renames."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DiskFull(OSError, UsageError):
    """The disk (or a file size limit) stopped the write of a file: one line naming it. Also an
    OSError, so that code handling failed writes (a run's checkpoint) handles it too."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A full disk while writing `path` is DiskFull naming `path` (the failed write itself knows
    only the temporary's name, or none)."""
    try:
        yield
    except OSError as error:
        if error.errno not in _FULL or isinstance(error, DiskFull):
            raise
        raise DiskFull(error.errno, os.strerror(error.errno), str(path)) from error


def remove_stale_temporaries(folder: str | os.PathLike, of: str | None = None) -> list[Path]:
    """Delete the temporaries (files and folders) under `folder`, or only those of the entry named
    `of` directly in it, and return their paths. Call it only while holding the lock on what is
    written there (the run's lock, pipelines/training/storage/run_lock.py, or the output's,
    pipelines/files/lock.py): the lock proves that no other process is writing, so each temporary
    is a killed writer's leftover. (Judging by whether the PID in the name is alive would not
    do: in a container a restarted process often gets the PID of the one that was killed.)"""
    folder = Path(folder)
    stale: list[Path] = []
    if of is not None:
        stale = [path for path in folder.iterdir() if is_temporary(path.name, of)] if folder.is_dir() else []
    else:
        for root, directories, files in os.walk(folder):
            stale += [Path(root) / name for name in directories + files if is_temporary(name)]
            directories[:] = [name for name in directories if not is_temporary(name)]  # not into debris
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
