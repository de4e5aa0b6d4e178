"""Our tokenizer side by side with tiktoken and HuggingFace `tokenizers`, on the same text and machine.

    python bench/tokenizer.py          (or: just bench tokenizer)

1. Encoding throughput with GPT-2's vocabulary: our `encode` in one process (cold cache, then
   warm), our file pipeline (`encode_file`: one process, and one per CPU), HF `tokenizers`, each
   against tiktoken's `encode_ordinary` on one thread, on the same text. Checks that our ids
   equal tiktoken's. With several processes it also reports how many cores the workers kept
   busy: on a machine shared with other jobs, fewer than it has.
2. BPE training wall time against HF's BpeTrainer (ByteLevel pre-tokenizer, same vocabulary size
   and special token), and for how many merges the two agree before they part: HF breaks count
   ties differently and does not cut the training text at special tokens.
3. Compression (bytes per token) of each tokenizer on each corpus.

Corpora come from $LMKIT_SHARED (default ../shared): data/tinystories_train.txt, data/owt_sample.txt,
data/tinystories_valid.txt and fixtures/corpus.en. Missing ones are skipped.
"""

import os
import resource
import sys
from collections.abc import Sequence
import tempfile
import time
from pathlib import Path

# HF would otherwise encode with a thread pool; every contender here gets one thread.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import tiktoken
import tokenizers as hf

from core.tokenizer import Tokenizer
from bench.common import bench_parser
from pipelines.command import command
from pipelines.flags import CommandParser
from pipelines.tokenizer.encode import encode_file
from pipelines.tokenizer.train import default_workers, train_bpe

EOT = "<|endoftext|>"
SHARED = Path(os.environ.get("LMKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared")).resolve()


def table(header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [tuple(map(str, row)) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    print()


def seconds(fn, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def hf_from_files(vocab: Path, merges: Path) -> hf.Tokenizer:
    tokenizer = hf.Tokenizer(hf.models.BPE.from_file(str(vocab), str(merges)))
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = hf.decoders.ByteLevel()
    return tokenizer


def hf_train(path: Path, vocab_size: int) -> tuple[hf.Tokenizer, list[tuple[bytes, bytes]]]:
    """HF's byte-level BPE trainer, and its merges in our byte form."""
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(path)], trainer)
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.model.save(directory)
        merges = Tokenizer.from_files(Path(directory) / "vocab.json", Path(directory) / "merges.txt").merges
    return tokenizer, merges


def bench_encoding(corpora: dict[str, Path]) -> None:
    print("== 1. Encoding throughput, GPT-2 vocabulary (MB/s; ratio = / tiktoken encode_ordinary, 1 thread)")
    vocab, merges = SHARED / "fixtures/gpt2_vocab.json", SHARED / "fixtures/gpt2_merges.txt"
    theirs = tiktoken.get_encoding("gpt2")
    hf_gpt2 = hf_from_files(vocab, merges)
    workers = default_workers()
    rows, notes = [], []
    for name, path in corpora.items():
        text = path.read_text(encoding="utf-8")
        megabytes = len(text.encode("utf-8")) / 1e6
        repeats = 3 if megabytes < 2 else 1
        ours = Tokenizer.from_files(vocab, merges, [EOT])
        cold = seconds(lambda: ours.encode(text))  # first pass: every distinct pre-token is merged
        warm = seconds(lambda: ours.encode(text), repeats=repeats)  # cache filled
        assert ours.encode(text) == theirs.encode(text, allowed_special={EOT}), f"ids differ from tiktoken on {name}"
        reference = seconds(lambda: theirs.encode_ordinary(text), repeats=repeats)
        hf_time = seconds(lambda: hf_gpt2.encode(text), repeats=repeats)
        pipeline = {}
        for processes in sorted({1, workers}):
            # Fresh tokenizers (so cold caches in the workers, as from the CLI) and fresh outputs (so
            # nothing is skipped); the time includes fingerprinting, start-up, reading and writing.
            fresh = iter([Tokenizer(ours.vocab, ours.merges, [EOT]) for _ in range(repeats)])
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with tempfile.TemporaryDirectory() as directory:
                runs = iter(range(repeats))
                pipeline[processes] = seconds(
                    lambda: encode_file(path, next(fresh), Path(directory) / f"{next(runs)}.npy", workers=processes),
                    repeats=repeats,
                )
                assert np.load(Path(directory) / "0.npy").tolist() == ours.encode(text)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if processes > 1:
                cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / repeats
                notes.append(
                    f"{name}: encode_file's {processes} workers used {cpu:.2f} CPU-s in {pipeline[processes]:.2f} s "
                    f"= {cpu / pipeline[processes]:.2f} cores busy on average"
                )
        for label, elapsed in [
            ("ours encode, cold cache", cold),
            ("ours encode, warm cache", warm),
            *((f"ours encode_file, {n} process{'es' if n > 1 else ''}", t) for n, t in pipeline.items()),
            ("HF tokenizers encode", hf_time),
            ("tiktoken encode_ordinary", reference),
        ]:
            rows.append((name, label, f"{megabytes / elapsed:.2f}", f"{reference / elapsed:.2f}x"))
    table(("corpus", "encoder", "MB/s", "vs tiktoken"), rows)
    print("\n".join(notes) + f"\n(load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs)\n")


def bench_training(jobs: list[tuple[str, Path, int]]) -> dict[str, Tokenizer]:
    print("== 2. BPE training wall time (s; speed = HF s / ours s, above 1: ours faster)")
    rows, trained = [], {}
    for name, path, vocab_size in jobs:
        result = {}
        ours_time = seconds(lambda: result.update(ours=train_bpe(path, vocab_size, [EOT])))
        hf_time = seconds(lambda: result.update(hf=hf_train(path, vocab_size)))
        vocab, merges = result["ours"]
        hf_merges = result["hf"][1]
        agree = next((i for i, (a, b) in enumerate(zip(merges, hf_merges)) if a != b), min(len(merges), len(hf_merges)))
        rows.append(
            (name, vocab_size, len(merges), len(hf_merges), agree, f"{ours_time:.3f}", f"{hf_time:.3f}", f"{hf_time / ours_time:.2f}x")
        )
        trained[f"ours {name}@{vocab_size}"] = Tokenizer(vocab, merges, [EOT])
    table(("corpus", "vocab", "our merges", "HF merges", "same first", "ours s", "HF s", "speed vs HF"), rows)
    return trained


def bench_compression(tokenizers: dict[str, Tokenizer], corpora: dict[str, Path]) -> None:
    print("== 3. Compression (UTF-8 bytes per token; higher packs more text into each token)")
    texts = {name: path.read_text(encoding="utf-8") for name, path in corpora.items()}
    rows = []
    for label, tokenizer in tokenizers.items():
        row = [label, len(tokenizer.vocab)]
        for text in texts.values():
            row.append(f"{len(text.encode('utf-8')) / len(tokenizer.encode(text)):.2f}")
        rows.append(tuple(row))
    table(("tokenizer", "vocab", *texts), rows)


def parser() -> CommandParser:
    return bench_parser(__doc__, "tokenizer")


@command
def main(argv: Sequence[str] | None = None) -> None:
    parser().parse_args(argv)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
    found = {
        "tinystories_train": SHARED / "data/tinystories_train.txt",
        "owt_sample": SHARED / "data/owt_sample.txt",
        "tinystories_valid": SHARED / "data/tinystories_valid.txt",
        "corpus.en": SHARED / "fixtures/corpus.en",
    }
    corpora = {name: path for name, path in found.items() if path.exists()}
    print(f"shared: {SHARED}; CPUs: {default_workers()}; corpora: {', '.join(corpora) or 'none'}\n")
    if not (SHARED / "fixtures/gpt2_vocab.json").exists():
        raise SystemExit("GPT-2 fixtures not found: set LMKIT_SHARED to the shared folder")

    with tempfile.TemporaryDirectory() as directory:
        # A bigger file, where per-process start-up and cold caches weigh less: all the data, 4 times.
        bigger = Path(directory) / "all_data_x4.txt"
        data = [corpora[name] for name in ("tinystories_train", "tinystories_valid", "owt_sample") if name in corpora]
        bigger.write_text("".join(path.read_text(encoding="utf-8") for path in data) * 4, encoding="utf-8")
        names = [name for name in ("tinystories_train", "owt_sample") if name in corpora]
        bench_encoding({**{name: corpora[name] for name in names}, bigger.stem: bigger})
    jobs = [("corpus.en", corpora["corpus.en"], 500)]
    jobs += [(name, corpora[name], 10_000) for name in ("tinystories_train", "owt_sample") if name in corpora]
    trained = bench_training(jobs)
    gpt2 = Tokenizer.from_files(SHARED / "fixtures/gpt2_vocab.json", SHARED / "fixtures/gpt2_merges.txt", [EOT])
    held_out = {name: corpora[name] for name in ("tinystories_valid", "owt_sample", "corpus.en") if name in corpora}
    bench_compression({"GPT-2 (= tiktoken)": gpt2, **trained}, held_out)


if __name__ == "__main__":
    sys.exit(main())
