"""Where the tokenizer commands may write, checked before any work.

The checks run before training or encoding starts, so a bad `--out` costs a second, not an hour
followed by a traceback; and no file the user did not ask to replace is lost. An output must not
be one of the command's inputs (nor lie inside an input folder: the corpus, the tokenizer), its
folder must be one this process can create or write in, and a file already there is replaced
only when the caller says so (`--force`, or a command proving it made that file itself).
"""

import os
from collections.abc import Sequence
from pathlib import Path

from core.errors import UsageError


def check_outputs(outputs: Sequence[Path], inputs: Sequence[Path], flag: str, *, replace: bool) -> None:
    """UsageError, in one line naming `flag` and the file, unless every output can be written
    without touching an input, and (unless `replace`) without replacing anything already there."""
    for output in outputs:
        _check_folder(output, flag)
        _check_not_an_input(output, inputs, flag)
        if output.is_dir():
            raise UsageError(f"{flag} {output} is a folder, not a file name")
        if not replace and os.path.lexists(output):
            raise UsageError(f"{flag}: {output} already exists; pass --force to replace it")


def _check_not_an_input(output: Path, inputs: Sequence[Path], flag: str) -> None:
    target = output.resolve()
    for source in inputs:
        # samefile catches a hard link, which resolving does not.
        if target == source.resolve() or (output.exists() and source.exists() and os.path.samefile(output, source)):
            raise UsageError(f"{flag}: {output} is the input {source}; it would be overwritten")
        if source.resolve() in target.parents:
            raise UsageError(f"{flag}: {output} lies inside the input {source}; write it elsewhere")


def _check_folder(output: Path, flag: str) -> None:
    """The nearest existing folder above `output` is a folder this process may write in."""
    existing = output.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {output}: cannot write in {existing} (permission denied)")


def check_output_folder(folder: Path, names: Sequence[str], inputs: Sequence[Path], flag: str, *, replace: bool) -> None:
    """As check_outputs, for a folder of the files `names` that is written whole, as one: besides
    their checks, a folder already there may hold nothing else, which the new one would drop."""
    check_outputs([folder / name for name in names], inputs, flag, replace=replace)
    others = sorted(path.name for path in folder.iterdir() if path.name not in names) if folder.is_dir() else []
    if others:
        raise UsageError(
            f"{flag} {folder} holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
            "the output is written as a folder of its own: give a new or empty folder"
        )
