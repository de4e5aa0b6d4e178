"""Train a byte-level BPE tokenizer on a text file and save it (vocab.json, merges.txt, special_tokens.json).

    python -m pipelines.tokenizer.train INPUT --model.vocab_size 10000 --special '<|endoftext|>' --out DIR [--force]

`--model.vocab_size` is the trainer's name for the same number: the model's vocabulary is the
tokenizer's.

Pre-token counting runs in parallel: the file is split into byte ranges at safe cuts (before a
special token, or after a lone newline; see core/pretokenize.py), and each worker streams its range
in bounded pieces, so memory grows with the number of distinct pre-tokens, never with the file
size. The merges then run in this process (core/bpe.py).

The file cutting and reading lives in pipelines/tokenizer/files.py, shared with encoding. `--out`
is checked before training (pipelines/tokenizer/outputs.py): a folder already holding a tokenizer's
files is written over only with --force. The folder is written whole (pipelines/tokenizer/store.py),
and locked while training and writing: a second `train-tokenizer` to it waits for the first.
"""

import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from itertools import islice
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from core.bpe import extend_vocab, initial_vocab, iter_merges
from core.pretokenize import count_pretokens, special_token_regex
from core.errors import UsageError
from core.tokenizer import Tokenizer
from pipelines.files.atomic import remove_stale_temporaries
from pipelines.files.lock import hold
from pipelines.command import command
from pipelines.flags import CommandParser, integer, processes
from pipelines.tokenizer.files import PIECE_BYTES, SERIAL_BELOW, check_text_file, cut_points, default_workers, read_pieces
from pipelines.tokenizer.outputs import check_output_folder
from pipelines.tokenizer.store import TOKENIZER_FILES, save_tokenizer


def _count_range(task: tuple[Path, int, int, list[str], int]) -> tuple[Counter[str], int]:
    """Pre-token counts of one byte range, and its length in bytes (for the progress bar)."""
    path, start, end, special_tokens, piece_bytes = task
    special_re = special_token_regex(special_tokens)
    counts: Counter[str] = Counter()
    for text, _ in read_pieces(path, start, end, special_tokens, piece_bytes):
        counts.update(count_pretokens(text, special_re))
    return counts, end - start


def count_file(
    path: Path, special_tokens: Sequence[str], workers: int, progress: bool, piece_bytes: int = PIECE_BYTES
) -> Counter[str]:
    """Pre-token counts of the whole file, special tokens excluded, over `workers` processes."""
    size = path.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="pre-tokenize", disable=not progress)
    if workers == 1:
        counts: Counter[str] = Counter()
        special_re = special_token_regex(special_tokens)
        for text, length in read_pieces(path, 0, size, special_tokens, piece_bytes):
            counts.update(count_pretokens(text, special_re))
            bar.update(length)
        bar.close()
        return counts
    # Several ranges per worker so that uneven ranges still keep every worker busy to the end.
    cuts = cut_points(path, max(workers * 4, -(-size // piece_bytes)), special_tokens)
    tasks = [(path, a, b, list(special_tokens), piece_bytes) for a, b in zip(cuts, cuts[1:])]
    total: Counter[str] = Counter()
    with Pool(workers) as pool:
        for counts, length in pool.imap_unordered(_count_range, tasks):
            total.update(counts)
            bar.update(length)
    bar.close()
    return total


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Sequence[str],
    *,
    num_workers: int | None = None,
    progress: bool = False,
    piece_bytes: int = PIECE_BYTES,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on a UTF-8 text file: (vocab id -> token bytes, merges in order).

    `num_workers`: pre-tokenizing processes; by default one per CPU, or just this process for files
    under 4 MiB. `piece_bytes`: how much text a worker holds at a time.
    """
    path = check_text_file(input_path)
    special_tokens = list(special_tokens)
    vocab = initial_vocab(special_tokens, vocab_size)  # fail on bad arguments before the long part
    size = path.stat().st_size
    workers = num_workers or (1 if size < SERIAL_BELOW else default_workers())
    counts = count_file(path, special_tokens, workers, progress, piece_bytes)
    word_counts = {word.encode("utf-8"): count for word, count in counts.items()}
    del counts
    wanted = vocab_size - len(vocab)
    merges = list(
        tqdm(islice(iter_merges(word_counts, vocab), wanted), total=wanted, desc="merge", disable=not progress)
    )
    return extend_vocab(vocab, merges), merges


def train_tokenizer(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    **kwargs,
) -> Path:
    """Train on `input_path` (see `train_bpe` for `kwargs`) and save the tokenizer as the folder
    `out_dir`, which must not hold a tokenizer already unless `force`."""
    train_and_save(input_path, vocab_size, special_tokens, Path(out_dir), force=force, **kwargs)
    return Path(out_dir)


def train_and_save(
    input_path: str | os.PathLike, vocab_size: int, special_tokens: Sequence[str], out_dir: Path, *, force: bool, **kwargs
) -> Tokenizer:
    """The trained tokenizer, once saved as the folder `out_dir`. Everything is checked first;
    the output is locked while training and writing (pipelines/files/lock.py). A second writer
    of the same `out_dir` waits, then is refused (as for any tokenizer there) unless `force`."""
    text, out_dir = check_text_file(input_path), Path(os.path.abspath(out_dir))  # `.` has no name to lock by
    check_special_tokens(special_tokens)
    check_vocab_size(vocab_size, special_tokens)
    check_tokenizer_out(out_dir, text, force)
    with hold(out_dir) as lock:
        if lock.waited:  # the other writer may have saved a tokenizer there meanwhile
            check_tokenizer_out(out_dir, text, force)
        remove_stale_temporaries(out_dir.parent, of=out_dir.name)  # a killed writer's half folder
        vocab, merges = train_bpe(text, vocab_size, special_tokens, **kwargs)
        tokenizer = Tokenizer(vocab, merges, list(special_tokens))
        save_tokenizer(tokenizer, out_dir, replace=force)
    return tokenizer


def check_special_tokens(special_tokens: Sequence[str]) -> None:
    """UsageError unless each special token is given once and is more than one byte: a token
    given twice, or one that is also a byte's own token, would have two ids and vocab.json one."""
    if "" in special_tokens:
        raise UsageError("--special '': a special token cannot be empty")
    for index, token in enumerate(special_tokens):
        if token in special_tokens[:index]:
            raise UsageError(f"--special {token!r} is given twice; give each special token once")
    for token in special_tokens:
        if len(token.encode("utf-8")) == 1:
            raise UsageError(f"--special {token!r} is a single byte, which is a token of its own already")


def check_vocab_size(vocab_size: int, special_tokens: Sequence[str]) -> None:
    """UsageError unless `vocab_size` holds the 256 bytes and every special token (each given once:
    check_special_tokens first)."""
    needed = 256 + len(special_tokens)
    if vocab_size < needed:
        raise UsageError(f"--model.vocab_size {vocab_size}: the 256 bytes and {needed - 256} special token(s) need at least {needed}")


def check_tokenizer_out(out_dir: Path, text: Path, force: bool) -> None:
    """UsageError unless the tokenizer folder can be written as `out_dir`: see check_output_folder."""
    check_output_folder(out_dir, TOKENIZER_FILES, [text], "--out", replace=force)


def _peak_memory_mib() -> float:
    """Peak resident memory of this process plus that of its largest finished worker (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


# Token files hold ids as uint32 at most (pipelines/tokenizer/encode.py).
MAX_VOCAB_SIZE = 2**32


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m pipelines.tokenizer.train", description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path, help="UTF-8 training text")
    parser.add_argument("--model.vocab_size", dest="vocab_size", type=integer(256, MAX_VOCAB_SIZE), required=True, metavar="N",
                        help="size of the final vocabulary, specials included")
    parser.add_argument("--special", action="append", default=[], metavar="TOKEN", help="a special token (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the tokenizer into")
    parser.add_argument("--workers", type=processes(), default=None, help="pre-tokenizing processes (default: per file size and CPUs)")
    parser.add_argument("--force", action="store_true", help="write over a tokenizer already in --out")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)

    started = time.perf_counter()
    tokenizer = train_and_save(
        args.input, args.vocab_size, args.special, args.out, force=args.force, num_workers=args.workers, progress=True
    )
    elapsed = time.perf_counter() - started
    out, vocab, merges = args.out, tokenizer.vocab, tokenizer.merges

    specials = {token.encode("utf-8") for token in args.special}
    learned = [token for token in vocab.values() if token not in specials]
    longest = max(map(len, learned))
    print(f"tokenizer saved to {out}")
    print(f"  vocab size   {len(vocab)} ({len(merges)} merges{'' if len(vocab) == args.vocab_size else f'; the text ran out of pairs before {args.vocab_size}'})")
    print(f"  wall time    {elapsed:.2f} s")
    print(f"  peak memory  {_peak_memory_mib():.0f} MiB (this process + largest worker)")
    shown = ", ".join(repr(token.decode("utf-8", errors="replace")) for token in learned if len(token) == longest)
    print(f"  longest      {longest} bytes: {shown}")


if __name__ == "__main__":
    sys.exit(main())
