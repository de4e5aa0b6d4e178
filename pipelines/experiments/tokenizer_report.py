"""The tokenizer experiments (handout §2.5, §2.7): train the TinyStories 10K and OpenWebText 32K
byte-level BPE tokenizers, then measure them.

    python -m pipelines.experiments.tokenizer_report [--data ../shared/data] [--samples 10] [--seed 0]

Tokenizers are trained once and cached under cache/tokenizer-report/ (keyed by the training
file's identity and the vocabulary size), with the training time and peak memory beside them. The
report gives, in Markdown: what each training produced (a small corpus may run out of pairs to
merge before reaching the requested size: the report says how many merges it made) and how much
of its time went to pre-tokenization rather than merging, the longest
tokens, the compression (bytes per token) of each tokenizer on sampled documents of each corpus,
and single-process encoding throughput with the implied time for the 825 GB Pile.
"""

import math
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from core.errors import UsageError
from core.tokenizer import Tokenizer
from pipelines.command import command
from pipelines.flags import CommandParser, integer
from pipelines.training.data.download import cache_dir
from pipelines.training.data.prepare import SPECIAL_TOKENS, file_key
from pipelines.tokenizer.store import load_tokenizer
from pipelines.tokenizer.train import SERIAL_BELOW, count_file, default_workers, train_tokenizer
from pipelines.files.atomic import write_atomic

EOT = "<|endoftext|>"
PILE_BYTES = 825e9
META_FILE = "report_meta.json"


@dataclass(frozen=True)
class Corpus:
    name: str
    train_file: str  # the file under --data the tokenizer is trained on
    vocab_size: int


CORPORA = (Corpus("TinyStories", "tinystories_train.txt", 10_000), Corpus("OpenWebText", "owt_sample.txt", 32_000))


def trained_tokenizer(text: Path, vocab_size: int, cache: Path) -> tuple[Tokenizer, dict]:
    """The tokenizer trained on `text` (from the cache when there) and its training record."""
    directory = cache / f"{text.stem}-v{vocab_size}-{file_key(text)}"
    if not (directory / META_FILE).exists():
        started = time.perf_counter()
        train_tokenizer(text, vocab_size, SPECIAL_TOKENS, directory, force=True)  # its own cache: redo a half-made one
        seconds = time.perf_counter() - started
        # The profile question: how much of that was pre-tokenization? Timed as a second pass with
        # the worker count train_bpe picks; the merges take the rest.
        started = time.perf_counter()
        count_file(text, SPECIAL_TOKENS, 1 if text.stat().st_size < SERIAL_BELOW else default_workers(), False)
        meta = {
            "seconds": seconds,
            "pretokenize_seconds": time.perf_counter() - started,
            # Linux reports KiB; counting workers too, as pre-tokenization may run in a pool.
            "peak_rss_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                             + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024,
            "requested_vocab_size": vocab_size,
            "train_bytes": text.stat().st_size,
        }
        write_atomic(directory / META_FILE, orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return load_tokenizer(directory), orjson.loads((directory / META_FILE).read_bytes())


def documents(text: str) -> list[str]:
    """The documents of a corpus file: split on <|endoftext|>, or, where the boundaries were lost
    (the OpenWebText sample), on blank lines."""
    parts = text.split(EOT) if EOT in text else text.split("\n\n")
    return [part.strip() for part in parts if part.strip()]


def bytes_per_token(tokenizer: Tokenizer, docs: Sequence[str]) -> float:
    total_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
    return total_bytes / sum(len(tokenizer.encode(doc)) for doc in docs)


def throughput(tokenizer: Tokenizer, text: str, repeats: int = 3) -> float:
    """Bytes per second encoding `text` in this process, with the pre-token cache cold: the best
    of `repeats` tries, as other work on the machine can only slow a try down."""
    best = math.inf
    for _ in range(repeats):
        fresh = Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
        started = time.perf_counter()
        fresh.encode(text)
        best = min(best, time.perf_counter() - started)
    return len(text.encode("utf-8")) / best


def printable(token: bytes) -> str:
    return repr(token.decode("utf-8", errors="backslashreplace"))


def report(data: Path, cache: Path, samples: int, seed: int) -> str:
    missing = [c.train_file for c in CORPORA if not (data / c.train_file).exists()]
    corpora = [c for c in CORPORA if c.train_file not in missing]
    if not corpora:
        raise UsageError(f"none of {[c.train_file for c in CORPORA]} found in {data}")
    texts = {c.name: (data / c.train_file).read_text(encoding="utf-8") for c in corpora}
    rng = random.Random(seed)
    sampled = {name: rng.sample(documents(text), min(samples, len(documents(text)))) for name, text in texts.items()}
    lines = [f"Data: {data}. Documents sampled with seed {seed}." + (f" Missing (skipped): {missing}." if missing else ""), ""]

    tokenizers = {}
    lines += ["## Training (train_bpe_tinystories, train_bpe_expts_owt)", "",
              "| tokenizer | trained on | requested vocab | actual vocab | merges | time (s) | pre-tokenizing (s) | peak RSS (MiB) | longest tokens (bytes) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for corpus in corpora:
        tokenizer, meta = trained_tokenizer(data / corpus.train_file, corpus.vocab_size, cache)
        tokenizers[corpus.name] = tokenizer
        longest = sorted(tokenizer.vocab.values(), key=len, reverse=True)[:3]
        lines.append(
            f"| {corpus.name} {corpus.vocab_size // 1000}K | {corpus.train_file} ({meta['train_bytes']:,} B) "
            f"| {corpus.vocab_size:,} | {len(tokenizer.vocab):,} | {len(tokenizer.merges):,} | {meta['seconds']:.2f} "
            f"| {meta['pretokenize_seconds']:.2f} "
            f"| {meta['peak_rss_mib']:.0f} | {', '.join(f'{printable(t)} ({len(t)})' for t in longest)} |"
        )

    lines += ["", f"## Compression on {samples} sampled documents, bytes per token (tokenizer_experiments a, b)", "",
              "| tokenizer | " + " | ".join(texts) + " |", "|---|" + "---:|" * len(texts)]
    for name, tokenizer in tokenizers.items():
        cells = [f"{bytes_per_token(tokenizer, docs):.2f}" for docs in sampled.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", "## Throughput, one process, cold cache, best of 3 (tokenizer_experiments c)", "",
              "| tokenizer | corpus | bytes | bytes/s | 825 GB Pile at this rate |", "|---|---|---:|---:|---:|"]
    for name, tokenizer in tokenizers.items():
        rate = throughput(tokenizer, texts[name])
        hours = PILE_BYTES / rate / 3600
        lines.append(f"| {name} | {name} | {len(texts[name].encode('utf-8')):,} | {rate / 1e6:.2f} MB/s "
                     f"| {hours:,.0f} h ({hours / 24:.1f} days; /N with N processes) |")
    return "\n".join(lines)


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m pipelines.experiments.tokenizer_report", description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("LMKIT_SHARED", "../shared")) / "data"
    parser.add_argument("--data.path", dest="data", type=Path, default=default_data, help=f"folder with {CORPORA[0].train_file}, "
                        f"{CORPORA[1].train_file} (default: $LMKIT_SHARED/data, else ../shared/data)")
    parser.add_argument("--cache", type=Path, help="tokenizer cache (default: $LMKIT_CACHE/tokenizer-report)")
    parser.add_argument("--samples", type=integer(1, 100_000), default=10, help="documents sampled per corpus")
    parser.add_argument("--seed", type=integer(0), default=0)
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    print(report(args.data, args.cache or cache_dir() / "tokenizer-report", args.samples, args.seed))


if __name__ == "__main__":
    sys.exit(main())
