"""From `--data.path DIR` to token files: find the splits, train the tokenizer and encode when needed.

A data directory holds either encoded splits (`train.npy` / `valid.npy`, or any `*train*.npy` /
`*valid*.npy`; a `tokenizer/` beside them is used for samples) or text (`train.txt` /
`valid.txt`, `tinystories_train.txt`, `TinyStoriesV2-GPT4-valid.txt`, ...). Text is tokenized once
into the cache ($LMKIT_CACHE, default ./cache): a tokenizer trained on the train split with the
model's vocabulary size, and the encoded splits, keyed so a changed file or tokenizer is redone.
Without it, the dataset (TinyStories-V2, or OpenWebText for `owt`) is downloaded into the cache
(only the first data.train_mb MB of its training text when set).

A resumed run reads its data with its own tokenizer: text is encoded with the run's copy (never a
newly trained one), and data tied to another tokenizer is refused (pipelines/training/data/tokenizer_match.py).

Every cache entry and the run's tokenizer copy is a folder or file written whole under a temporary
name (pipelines/files/atomic.py), by one writer at a time (pipelines/files/lock.py): two trainers
that need the same entry at once wait for each other, and the second uses what the first made.
"""

import hashlib
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.errors import UsageError
from core.tokenizer import Tokenizer
from pipelines.files.atomic import copy_folder, remove_stale_temporaries
from pipelines.files.lock import hold
from pipelines.training.data.dataset_names import check_dataset_matches
from pipelines.tokenizer.encode import encode_file
from pipelines.tokenizer.store import load_tokenizer, save_tokenizer
from pipelines.tokenizer.train import train_bpe
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import check_one_window, check_tokens, eval_starts, open_tokens
from pipelines.training.data.download import cache_dir, fetch_dataset
from pipelines.training.data.tokenizer_match import check_same_tokenizer
from pipelines.training.storage.run_dir import TOKENIZER_DIR, checkpoint_path

SPECIAL_TOKENS = ["<|endoftext|>"]
SPLIT_WORDS = {"train": ("train",), "valid": ("valid", "validation", "val")}


@dataclass(frozen=True)
class DataFiles:
    train: Path  # .npy token files
    valid: Path
    tokenizer: Path | None  # the directory that decodes them, when known


@dataclass(frozen=True)
class TrainingData:
    train: np.ndarray  # memory-mapped token ids
    valid: np.ndarray
    valid_starts: np.ndarray  # the fixed validation windows
    tokenizer_source: Path | None  # the directory that decodes them, when known
    tokenizer: Tokenizer | None = None  # the run's copy, once with_run_tokenizer has made it


def open_training_data(config: TrainConfig, run_tokenizer: Path | None = None, recorded: str | None = None) -> TrainingData:
    """Token files found or made, and checked against the vocabulary and the tokenizer: every error
    about the data comes from here, before the run writes anything.

    On resume, `run_tokenizer` is the run's own tokenizer folder (None when it has none) and
    `recorded` the fingerprint its checkpoint stores (None when it stores none): text is encoded
    with the run's tokenizer, and data, tokenizer and checkpoint that disagree are refused."""
    files = prepare_data(config, run_tokenizer)
    check_same_tokenizer(files.train, files.valid, files.tokenizer, run_tokenizer, recorded)
    train_tokens, valid_tokens = open_tokens(files.train), open_tokens(files.valid)
    for path, tokens in ((files.train, train_tokens), (files.valid, valid_tokens)):
        check_tokens(tokens, config.model.vocab_size, name=str(path))
        check_one_window(len(tokens), config.model.context_length, path)  # refused before the run directory exists
    starts = eval_starts(len(valid_tokens), config.model.context_length, config.eval.windows)
    return TrainingData(train_tokens, valid_tokens, starts, files.tokenizer)


def with_run_tokenizer(data: TrainingData, run_dir: Path, vocab_size: int) -> TrainingData:
    """The data with the run's own copy of its tokenizer (copied in when missing), so that the
    run decodes on its own; a resumed run keeps the copy it has. Safe to call from every process
    of a run at once: see copy_run_tokenizer."""
    target = run_dir / TOKENIZER_DIR
    with hold(target, announce=False):
        if data.tokenizer_source is not None:
            copy_run_tokenizer(data.tokenizer_source, run_dir)
        tokenizer = load_tokenizer(target) if target.exists() else None
    if tokenizer is not None and len(tokenizer.vocab) < vocab_size:
        print(f"note: the tokenizer has {len(tokenizer.vocab)} tokens, fewer than vocab_size {vocab_size} "
              "(its training text ran out of pairs to merge); the extra embedding rows stay untrained", file=sys.stderr)
    return replace(data, tokenizer=tokenizer)


def copy_run_tokenizer(source: Path, run_dir: Path) -> None:
    """Make RUN/tokenizer a whole copy of the folder `source`, once; call it holding the lock on
    RUN/tokenizer. A copy already there is kept when the run has a checkpoint (it is the run's own)
    or when it is `source`'s tokenizer; otherwise it is what a start that never trained left, and is
    replaced. The copy is built under a temporary name and renamed into place."""
    target = run_dir / TOKENIZER_DIR
    if target.exists() and (checkpoint_path(run_dir).exists() or _same_tokenizer(source, target)):
        return
    remove_stale_temporaries(run_dir, of=TOKENIZER_DIR)  # a killed copy's half folder
    copy_folder(source, target, replace=True)


def _same_tokenizer(source: Path, target: Path) -> bool:
    if source.resolve() == target.resolve():
        return True
    try:
        return load_tokenizer(target).fingerprint() == load_tokenizer(source).fingerprint()
    except UsageError:  # an incomplete copy (an older version's) is no tokenizer: replace it
        return False


def prepare_data(config: TrainConfig, run_tokenizer: Path | None = None) -> DataFiles:
    """The token files (and tokenizer) of config.data: found, or made from text and cached. Text is
    encoded with --data.tokenizer, else `run_tokenizer`, else one trained on the train split."""
    data = config.data
    source = Path(data.path) if data.path else fetch_dataset(config.dataset, cache_dir() / "data" / config.dataset, data.train_mb)
    if not source.is_dir():
        raise UsageError(f"--data.path {source} is not a directory")
    tokenizer = Path(data.tokenizer) if data.tokenizer else None
    if tokenizer is not None and not tokenizer.is_dir():
        raise UsageError(f"--data.tokenizer {tokenizer} is not a directory")
    train_npy, valid_npy = find_split(source, "train", ".npy"), find_split(source, "valid", ".npy")
    if train_npy and valid_npy:
        check_dataset_matches(config.dataset, train_npy, valid_npy)
        if tokenizer is None and (source / "tokenizer").is_dir():
            tokenizer = source / "tokenizer"
        return DataFiles(train_npy, valid_npy, tokenizer or run_tokenizer)

    train_txt, valid_txt = find_split(source, "train", ".txt"), find_split(source, "valid", ".txt")
    if not (train_txt and valid_txt):
        raise UsageError(
            f"{source} holds neither encoded splits (train.npy and valid.npy) nor text splits "
            f"(train.txt and valid.txt, or names containing 'train' and 'valid' such as tinystories_train.txt)"
        )
    for text in (train_txt, valid_txt):
        if text.stat().st_size == 0:
            raise UsageError(f"{text} is empty: there is nothing to train or validate on")
    check_dataset_matches(config.dataset, train_txt, valid_txt)
    tokenizer = tokenizer or run_tokenizer
    if tokenizer is None:
        tokenizer = cache_dir() / "tokenizers" / f"{train_txt.stem}-v{config.model.vocab_size}-{file_key(train_txt)}"
        _cached_tokenizer(train_txt, config.model.vocab_size, tokenizer)
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
        raise UsageError(f"several {split} files in {directory}: {[p.name for p in found]}; keep one or pass another --data.path")
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


def _cached_tokenizer(text: Path, vocab_size: int, out_dir: Path) -> None:
    """Train the tokenizer of the cache entry `out_dir` unless it is there. Under its lock: a
    second trainer that needs it waits, then finds it made."""
    if out_dir.is_dir():
        return
    with hold(out_dir):
        if out_dir.is_dir():  # made while this process waited
            return
        remove_stale_temporaries(out_dir.parent, of=out_dir.name)  # a killed trainer's half folder
        print(f"training a {vocab_size}-token BPE tokenizer on {text} -> {out_dir}")
        vocab, merges = train_bpe(text, vocab_size, SPECIAL_TOKENS)
        save_tokenizer(Tokenizer(vocab, merges, SPECIAL_TOKENS), out_dir)


def _encoded(text: Path, tokenizer_dir: Path, token_dir: Path) -> Path:
    # encode_file writes atomically and skips the work when its sidecar shows the output is current.
    # The cache is this program's own: a file there that is not current is redone (force).
    return encode_file(text, tokenizer_dir, token_dir / f"{text.stem}.npy", force=True, progress=True)
