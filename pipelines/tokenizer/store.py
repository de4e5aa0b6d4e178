"""A tokenizer folder: vocab.json and merges.txt in GPT-2's format, plus special_tokens.json.

The formats are core/tokenizer.py's; this module opens the files. A folder is written whole, under
a temporary name renamed into place (pipelines/files/atomic.py), so a folder that is there is
complete; one that is not (written by hand, or by an older version) is refused when loaded, in
one line naming the missing or broken file.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from core.errors import UsageError
from core.tokenizer import Tokenizer, format_merges, format_vocab, parse_merges, parse_vocab
from pipelines.files.atomic import build_folder

VOCAB_FILE, MERGES_FILE, SPECIALS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, SPECIALS_FILE)

T = TypeVar("T")


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer `save_tokenizer` wrote to `directory`; UsageError naming the file when one is
    missing or is not what its name says, or naming the folder when the files disagree."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"tokenizer folder {directory} {'is not a folder' if directory.exists() else 'does not exist'}")
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()]
    if missing:
        raise UsageError(f"tokenizer folder {directory} is incomplete: {', '.join(missing)} missing")
    vocab = _parse(directory / VOCAB_FILE, _parse_vocab)
    merges = _parse(directory / MERGES_FILE, lambda text: parse_merges(text, source=str(directory / MERGES_FILE)))
    specials = _parse(directory / SPECIALS_FILE, _parse_specials)
    try:
        return Tokenizer(vocab, merges, specials)
    except ValueError as error:
        raise UsageError(f"tokenizer folder {directory} does not hold one tokenizer: {error}") from None


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike, *, replace: bool = False) -> Path:
    """Write vocab.json, merges.txt and special_tokens.json as the new folder `directory`, whole
    or not at all. A folder already there must be empty, or is replaced with `replace`: callers
    check first (pipelines/tokenizer/outputs.py)."""
    directory = Path(directory)
    with build_folder(directory, replace=replace) as building:
        (building / VOCAB_FILE).write_text(format_vocab(tokenizer.vocab), encoding="utf-8")
        (building / MERGES_FILE).write_text(format_merges(tokenizer.merges), encoding="utf-8")
        specials = json.dumps(tokenizer.special_tokens, ensure_ascii=False) + "\n"
        (building / SPECIALS_FILE).write_text(specials, encoding="utf-8")
    return directory


def _parse(path: Path, parse: Callable[[str], T]) -> T:
    """`parse` of the text of `path`, or UsageError naming `path`."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # bad JSON, UTF-8 or shape
        message = str(error)
        if message.startswith(str(path)):  # parse_merges names its file and line already
            raise UsageError(message) from None
        raise UsageError(f"{path} is not a valid {path.name}: {type(error).__name__}: {message}") from None


def _parse_vocab(text: str) -> dict[int, bytes]:
    vocab = parse_vocab(text)
    if not all(type(i) is int and i >= 0 for i in vocab):
        raise ValueError("expected a JSON object of token -> id, ids whole numbers >= 0")
    return vocab


def _parse_specials(text: str) -> list[str]:
    specials = json.loads(text)
    if not isinstance(specials, list) or not all(isinstance(token, str) for token in specials):
        raise ValueError("expected a JSON list of strings")
    return specials
