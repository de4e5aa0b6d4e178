"""Shared helpers for the side-by-side benchmarks: interleaved timing, a measured matmul peak and
a plain table."""

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from bench.peer import from_params
from core.config import ModelConfig
from core.optim import Schedule, adamw, chain, clip_by_global_norm
from core.train_state import init_train_state
from core.train_step import make_train_step
from core.tree import Tree, tree_map
from pipelines.flags import CommandParser, integer


# The benchmarks' shape flags: the trainer's setting names, read into short attribute names.
MODEL_FLAGS = {"context": "--model.context_length", "d_model": "--model.d_model", "layers": "--model.num_layers",
               "heads": "--model.num_heads", "vocab": "--model.vocab_size"}


def add_model_arguments(
    parser: argparse.ArgumentParser, *, context: int, d_model: int | None, heads: int, vocab: int, layers: int = 4
) -> None:
    """The model-shape flags every benchmark takes, with that benchmark's defaults; no
    --model.d_model when `d_model` is None (a benchmark that sets the widths its own way)."""
    defaults = {"context": context, "d_model": d_model, "layers": layers, "heads": heads, "vocab": vocab}
    for dest, flag in MODEL_FLAGS.items():
        if defaults[dest] is not None:
            parser.add_argument(flag, dest=dest, type=integer(1), default=defaults[dest], metavar="N")


def bench_parser(module_doc: str, name: str) -> CommandParser:
    """The parser of `just bench NAME`: the project's flag style, the module's docstring as help."""
    return CommandParser(prog=f"python -m bench.{name}", description=module_doc, formatter_class=argparse.RawDescriptionHelpFormatter)


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


def print_speed_table(
    times: dict[str, float],
    tokens_per_step: int,
    eager_peer: str,
    compiled_peer: str,
    *,
    flops_per_step: float | None = None,
    peak_flops: float | None = None,
    peer_label: str = "module",
) -> None:
    """ms/step, tokens/s and the speed of each variant against its peer (the compiled peer for
    compiled variants): above 1.0, the variant is faster. Given the FLOPs of a step and the
    machine's peak FLOP/s, also the fraction of that peak each variant reaches (MFU)."""
    mfu = flops_per_step is not None and peak_flops is not None
    rows = []
    for name, seconds in times.items():
        peer = times[compiled_peer if "compiled" in name else eager_peer]
        row = (name, f"{seconds * 1e3:.1f}", f"{tokens_per_step / seconds:,.0f}", f"{peer / seconds:.2f}")
        rows.append(row + ((f"{flops_per_step / seconds / peak_flops:.1%}",) if mfu else ()))
    header = ("variant", "ms/step", "tokens/s", f"speed vs {peer_label}")
    print_table(rows, header + (("of matmul peak",) if mfu else ()))


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


def peak_memory_rise(fn: Callable[[], object], device: torch.device, calls: int = 3) -> int:
    """Bytes by which peak memory rises above the current level while `fn` runs `calls` times:
    torch's allocator peak on CUDA; on Linux CPUs the peak resident set (VmHWM), whose mark is
    reset first by writing 5 to /proc/self/clear_refs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(calls):
        fn()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


# Model shapes of the training benchmarks: ModelConfig fields and the batch size.
SHAPES: dict[str, tuple[dict, int]] = {
    "cpu-small": ({"vocab_size": 2048, "context_length": 128, "d_model": 128, "num_layers": 4, "num_heads": 4}, 8),
    # The handout's TinyStories baseline (d_ff 1,344 by default).
    "baseline": ({"vocab_size": 10_000, "context_length": 256, "d_model": 512, "num_layers": 4, "num_heads": 16}, 4),
    "gpt2-small": ({"vocab_size": 50_257, "context_length": 1024, "d_model": 768, "num_layers": 12, "num_heads": 12}, 8),
}
BETAS, EPS, WEIGHT_DECAY, MAX_NORM = (0.9, 0.95), 1e-8, 0.1, 1.0
StepFn = Callable[[], torch.Tensor]


def pure_step_fn(config: ModelConfig, initial: Tree, schedule: Schedule, batch: tuple[torch.Tensor, torch.Tensor], **step_options) -> StepFn:
    """One call, one step of our pure train step (options: grad_mode, compile, autocast, donate;
    donating, as the trainer does, by default) from a copy of `initial`, with weight decay on every
    leaf as the peer's single parameter group; returns the loss. The step takes `batch` unless
    given another."""
    optimizer = chain(clip_by_global_norm(MAX_NORM), adamw(schedule, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY))
    train_step = make_train_step(config, optimizer, **{"donate": True, **step_options})
    holder = {"state": init_train_state(tree_map(torch.clone, initial), optimizer, rng=0)}

    def step(next_batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        holder["state"], metrics = train_step(holder["state"], next_batch or batch)
        return metrics["loss"]

    return step


def peer_step_fn(
    config: ModelConfig,
    initial: Tree,
    schedule: Schedule,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    compile: bool = False,
    autocast: tuple[str, torch.dtype] | None = None,
) -> StepFn:
    """One call, one step of the expert peer from the same weights: backward(), clip_grad_norm_
    and torch.optim.AdamW, foreach (fused on CUDA), the learning rate set from `schedule`."""
    x, y = batch
    model = from_params(initial, config, device=x.device)
    fused = x.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=schedule(0), betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, foreach=not fused, fused=fused
    )
    loss_of = torch.compile(model) if compile else model
    context = (lambda: torch.autocast(autocast[0], dtype=autocast[1])) if autocast else contextlib.nullcontext
    count = {"step": 0}

    def step() -> torch.Tensor:
        with context():
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM, foreach=True)
        for group in optimizer.param_groups:
            group["lr"] = schedule(count["step"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count["step"] += 1
        return loss.detach()

    return step
