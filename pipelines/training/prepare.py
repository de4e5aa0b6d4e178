"""From `--data DIR` to token files: find the splits, train the tokenizer and encode when needed.

A data directory holds either encoded splits (`train.npy` / `valid.npy`, or any `*train*.npy` /
`*valid*.npy`; a `tokenizer/` beside them is used for samples) or text (`train.txt` /
`valid.txt`, `tinystories_train.txt`, `TinyStoriesV2-GPT4-valid.txt`, ...). Text is tokenized once
into the cache ($LMKIT_CACHE, default ./cache): a tokenizer trained on the train split with the
model's vocabulary size, and the encoded splits, keyed so a changed file or tokenizer is redone.
Without `--data`, TinyStories-V2 is downloaded into the cache.
"""

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipelines.training.download import cache_dir, fetch_tinystories
from pipelines.tokenizer.encode import encode_file
from pipelines.training.config import TrainConfig
from pipelines.tokenizer.train import train_tokenizer

SPECIAL_TOKENS = ["<|endoftext|>"]
SPLIT_WORDS = {"train": ("train",), "valid": ("valid", "validation", "val")}


@dataclass(frozen=True)
class DataFiles:
    train: Path  # .npy token files
    valid: Path
    tokenizer: Path | None  # the directory that decodes them, when known


def prepare_data(config: TrainConfig) -> DataFiles:
    source = Path(config.data) if config.data else fetch_tinystories(cache_dir() / "data" / config.dataset)
    if not source.is_dir():
        raise FileNotFoundError(f"--data {source} is not a directory")
    tokenizer = Path(config.tokenizer) if config.tokenizer else None
    train_npy, valid_npy = find_split(source, "train", ".npy"), find_split(source, "valid", ".npy")
    if train_npy and valid_npy:
        if tokenizer is None and (source / "tokenizer").is_dir():
            tokenizer = source / "tokenizer"
        return DataFiles(train_npy, valid_npy, tokenizer)

    train_txt, valid_txt = find_split(source, "train", ".txt"), find_split(source, "valid", ".txt")
    if not (train_txt and valid_txt):
        raise FileNotFoundError(
            f"{source} holds neither encoded splits (train.npy and valid.npy) nor text splits "
            f"(train.txt and valid.txt, or names containing 'train' and 'valid' such as tinystories_train.txt)"
        )
    if tokenizer is None:
        tokenizer = cache_dir() / "tokenizers" / f"{train_txt.stem}-v{config.model.vocab_size}-{file_key(train_txt)}"
        if not tokenizer.is_dir():
            _train_tokenizer(train_txt, config.model.vocab_size, tokenizer)
    token_dir = cache_dir() / "tokens" / f"{tokenizer.name}-{_tokenizer_key(tokenizer)}"
    return DataFiles(_encoded(train_txt, tokenizer, token_dir), _encoded(valid_txt, tokenizer, token_dir), tokenizer)


def find_split(directory: Path, split: str, suffix: str) -> Path | None:
    """The one file in `directory` with `suffix` whose name says it is `split`; an error if several."""
    words = SPLIT_WORDS[split]
    found = [
        path for path in sorted(directory.glob(f"*{suffix}"))
        if any(word in re.split(r"[-_.\s]+", path.stem.lower()) for word in words)
    ]
    if len(found) > 1:
        raise ValueError(f"several {split} files in {directory}: {[p.name for p in found]}; keep one or pass another --data")
    return found[0] if found else None


def file_key(path: Path) -> str:
    """A cheap identity of a file's version (path, size, modification time): hashing a 10 GB corpus
    on every run would cost more than the check is worth."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _tokenizer_key(tokenizer_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(tokenizer_dir.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _train_tokenizer(text: Path, vocab_size: int, out_dir: Path) -> None:
    # Built beside its final place and renamed: an interrupted training leaves nothing half-written.
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"training a {vocab_size}-token BPE tokenizer on {text} -> {out_dir}")
    train_tokenizer(text, vocab_size, SPECIAL_TOKENS, partial)
    partial.rename(out_dir)


def _encoded(text: Path, tokenizer_dir: Path, token_dir: Path) -> Path:
    # encode_file writes atomically and skips the work when its sidecar shows the output is current.
    return encode_file(text, tokenizer_dir, token_dir / f"{text.stem}.npy", progress=True)
