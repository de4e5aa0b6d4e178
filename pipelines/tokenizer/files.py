"""Reading big text files in pieces that tokenize on their own: shared by tokenizer training
and file encoding.

A file is cut into byte ranges at safe cuts (before a special token, or after a lone newline; see
core/pretokenize.py), and each range is read in bounded pieces that also end at safe cuts, so
tokenizing the pieces one by one, in any process, gives exactly the tokens of the whole file.
"""

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from core.errors import UsageError
from core.pretokenize import first_safe_cut, last_safe_cut

# Bytes a worker reads at a time: bounds its memory, whatever the size of the file.
PIECE_BYTES = 1 << 24
# Below this size one process counts faster than starting workers and merging their counts.
SERIAL_BELOW = 1 << 22
# How far ahead each search for a safe cut reads at a time.
_SEARCH_BYTES = 1 << 16


def check_text_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, or UsageError saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UsageError(f"input text {path} {what}")
    return path


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cut_points(path: Path, parts: int, special_tokens: Sequence[str]) -> list[int]:
    """Byte offsets [0, ..., size] splitting the file into about `parts` ranges at safe cuts.

    Each cut is the first safe one after an even split point; reading only small windows there.
    A range may swallow its neighbour where no safe cut exists (a file with no newline at all).
    """
    specials = [token.encode("utf-8") for token in special_tokens]
    margin = 2 * max(map(len, specials), default=0)
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as file:
        for part in range(1, parts):
            position = max(size * part // parts, cuts[-1] + 1)
            while position < size:
                start = max(0, position - margin)
                file.seek(start)
                window = file.read(position - start + _SEARCH_BYTES + margin)
                cut = first_safe_cut(window, specials, position - start)
                if cut is not None:
                    cuts.append(start + cut)
                    break
                position += _SEARCH_BYTES
            else:
                break
    return cuts + [size]


def _decode(data: bytes, path: Path, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path} is not UTF-8 text: byte {data[error.start]:#04x} at offset {offset + error.start} ({error.reason})"
        ) from None


def read_pieces(
    path: Path, start: int, end: int, special_tokens: Sequence[str], piece_bytes: int = PIECE_BYTES
) -> Iterator[tuple[str, int]]:
    """The text of bytes [start, end) of the file (both safe cuts), as (text, byte length) pieces of
    about `piece_bytes`, each ending at a safe cut, so each piece tokenizes on its own."""
    specials = [token.encode("utf-8") for token in special_tokens]
    with open(path, "rb") as file:
        file.seek(start)
        offset, carry = start, b""
        while offset < end:
            fresh = file.read(min(piece_bytes, end - offset - len(carry)))
            data = carry + fresh
            at_end = offset + len(data) >= end
            if not fresh and not at_end:
                raise UsageError(f"{path} ended at {offset + len(data)} bytes, before {end}: did it change while being read?")
            cut = len(data) if at_end else last_safe_cut(data, specials)
            if not cut:
                carry = data  # no safe cut yet: read on
                continue
            yield _decode(data[:cut], path, offset), cut
            offset, carry = offset + cut, data[cut:]
