"""Shared helpers for the side-by-side benchmarks: interleaved timing and a plain table."""

import argparse
import statistics
import time
from collections.abc import Callable

from core.config import ModelConfig


def add_model_arguments(parser: argparse.ArgumentParser, *, context: int, d_model: int, heads: int, vocab: int, layers: int = 4) -> None:
    """The model-shape flags every benchmark takes, with that benchmark's defaults."""
    parser.add_argument("--context", type=int, default=context)
    parser.add_argument("--d-model", type=int, default=d_model)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--heads", type=int, default=heads)
    parser.add_argument("--vocab", type=int, default=vocab)


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab, context_length=args.context, d_model=args.d_model, num_layers=args.layers, num_heads=args.heads
    )


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, run in turn so that drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def print_speed_table(times: dict[str, float], tokens_per_step: int, eager_peer: str, compiled_peer: str) -> None:
    """ms/step, tokens/s and the speed of each variant against its peer (the compiled peer for
    compiled variants): above 1.0, the variant is faster."""
    rows = []
    for name, seconds in times.items():
        peer = times[compiled_peer if "compiled" in name else eager_peer]
        rows.append((name, f"{seconds * 1e3:.1f}", f"{tokens_per_step / seconds:,.0f}", f"{peer / seconds:.2f}"))
    print_table(rows, ("variant", "ms/step", "tokens/s", "speed vs module"))


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
