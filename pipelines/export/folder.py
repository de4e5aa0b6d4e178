"""A folder written whole or not at all: built under a temporary name, renamed into place.

A local helper until pipelines/files/atomic.py has a folder-atomic one (the lead may swap it in).
"""

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipelines.files.atomic import temporary_path


@contextlib.contextmanager
def building_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder, `.NAME.tmpPID` beside `path`, that becomes `path` when the block ends
    without an error; on an error (or Ctrl-C) it is removed, with any parent folders made for it,
    and `path` is left as it was.

    The rename refuses a `path` that appeared meanwhile with something in it (an empty folder it
    replaces), so nothing another writer put there is lost. Files written into the folder are flushed by the caller
    (write_atomic does); the renames themselves are made durable here."""
    path = Path(path)
    tmp = temporary_path(path)
    created = [parent for parent in path.parents if not parent.exists()]  # deepest first
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_folder(tmp)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # the folders made for it go too, unless something else is in them now
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
