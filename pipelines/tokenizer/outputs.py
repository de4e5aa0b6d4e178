"""Where the tokenizer commands may write, checked before any work; and writing a file whole.

The checks run before training or encoding starts, so a bad `--out` costs a second, not an hour
followed by a traceback; and no file the user did not ask to replace is lost. An output must not
be one of the command's inputs (nor lie inside an input folder: the corpus, the tokenizer), its
folder must be one this process can create or write in, and a file already there is replaced
only when the caller says so (`--force`, or a command proving it made that file itself).
"""

import os
from collections.abc import Sequence
from pathlib import Path


def check_outputs(outputs: Sequence[Path], inputs: Sequence[Path], flag: str, *, replace: bool) -> None:
    """ValueError, in one line naming `flag` and the file, unless every output can be written
    without touching an input, and (unless `replace`) without replacing anything already there."""
    for output in outputs:
        _check_folder(output, flag)
        _check_not_an_input(output, inputs, flag)
        if output.is_dir():
            raise ValueError(f"{flag} {output} is a folder, not a file name")
        if not replace and os.path.lexists(output):
            raise ValueError(f"{flag}: {output} already exists; pass --force to replace it")


def _check_not_an_input(output: Path, inputs: Sequence[Path], flag: str) -> None:
    target = output.resolve()
    for source in inputs:
        # samefile catches a hard link, which resolving does not.
        if target == source.resolve() or (output.exists() and source.exists() and os.path.samefile(output, source)):
            raise ValueError(f"{flag}: {output} is the input {source}; it would be overwritten")
        if source.resolve() in target.parents:
            raise ValueError(f"{flag}: {output} lies inside the input {source}; write it elsewhere")


def _check_folder(output: Path, flag: str) -> None:
    """The nearest existing folder above `output` is a folder this process may write in."""
    existing = output.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {output}: cannot write in {existing} (permission denied)")


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` under a temporary name beside `path`, then rename it there: a reader sees the
    old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
