"""A tokenizer directory: vocab.json and merges.txt in GPT-2's format, plus special_tokens.json.

The formats are core/tokenizer.py's; this module only opens the files."""

import json
import os
from pathlib import Path

from core.tokenizer import Tokenizer, format_merges, format_vocab, parse_merges, parse_vocab
from pipelines.tokenizer.outputs import write_text_atomically

VOCAB_FILE, MERGES_FILE, SPECIALS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, SPECIALS_FILE)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer `save_tokenizer` wrote to `directory` (without special_tokens.json, as for
    GPT-2's own files: no special tokens)."""
    directory = Path(directory)
    specials_path = directory / SPECIALS_FILE
    specials = json.loads(specials_path.read_text(encoding="utf-8")) if specials_path.exists() else []
    merges_path = directory / MERGES_FILE
    vocab = parse_vocab((directory / VOCAB_FILE).read_text(encoding="utf-8"))
    merges = parse_merges(merges_path.read_text(encoding="utf-8"), source=str(merges_path))
    return Tokenizer(vocab, merges, specials)


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write vocab.json, merges.txt and special_tokens.json into `directory` (created if needed),
    each whole or not at all. It writes over files there: callers check first (check_outputs)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomically(directory / VOCAB_FILE, format_vocab(tokenizer.vocab))
    write_text_atomically(directory / MERGES_FILE, format_merges(tokenizer.merges))
    specials = json.dumps(tokenizer.special_tokens, ensure_ascii=False) + "\n"
    write_text_atomically(directory / SPECIALS_FILE, specials)
    return directory
