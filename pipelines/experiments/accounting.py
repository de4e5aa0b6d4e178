"""Parameter, FLOP, memory and training-time accounting, printed as Markdown tables.

    python -m pipelines.experiments.accounting                       # the handout's GPT-2 sizes (transformer_accounting, adamwAccounting)
    python -m pipelines.experiments.accounting --preset tinystories/baseline --peak-flops 989e12 --mfu 0.2
    python -m pipelines.experiments.accounting --model.d_model 256 --model.num_layers 4 --model.num_heads 8 --model.vocab_size 10000 --model.context_length 256

With --preset or any model flag it reports on that one config (steps and batch from the preset
unless given); otherwise on GPT-2 small/medium/large/XL as the handout defines them (vocabulary
50,257, context 1,024, d_ff = 4 d_model, SwiGLU as built here), XL at context 16,384, the largest
XL batch in 80 GB and the A100 estimate. The formulas are in core/accounting.py.
"""

import argparse
from collections.abc import Sequence
from dataclasses import fields, replace

from core.accounting import (
    ADAMW_FLOPS_PER_PARAM,
    activation_floats,
    adamw_update_flops,
    forward_flops,
    forward_flops_by_component,
    max_batch_size,
    params_by_component,
    training_memory,
    training_seconds,
    training_step_flops,
)
from core.config import ModelConfig
from pipelines.training.config import parse_overrides, resolve_config

VOCAB, CONTEXT = 50_257, 1_024
GPT2 = {  # (num_layers, d_model, num_heads), handout §3.6 problem (transformer_accounting)
    "GPT-2 small": (12, 768, 12),
    "GPT-2 medium": (24, 1024, 16),
    "GPT-2 large": (36, 1280, 20),
    "GPT-2 XL": (48, 1600, 25),
}
A100_FP32 = 19.5e12  # FLOP/s, the handout's figure
MEMORY_80GB = 80e9


def gpt2(name: str, **changes) -> ModelConfig:
    layers, d, heads = GPT2[name]
    values = dict(vocab_size=VOCAB, context_length=CONTEXT, d_model=d, num_layers=layers, num_heads=heads, d_ff=4 * d)
    return ModelConfig(**{**values, **changes})


def human(n: float, unit: str = "") -> str:
    """3 significant figures with an SI prefix: 2.13e9 -> '2.13 G'."""
    for prefix, scale in (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def params_table(configs: dict[str, ModelConfig]) -> str:
    # Every config's components in order of appearance: the value residual's exists only when on.
    components = list(dict.fromkeys(c for config in configs.values() for c in params_by_component(config)))
    rows = []
    for name, config in configs.items():
        parts = params_by_component(config)
        total = sum(parts.values())
        rows.append([name, f"{total:,}", human(4 * total, "B")] + [f"{parts.get(c, 0):,}" for c in components])
    return table(["model", "parameters", "fp32 bytes"] + components, rows)


def flops_table(configs: dict[str, ModelConfig], context_length: int | None = None) -> str:
    components = list(forward_flops_by_component(next(iter(configs.values()))))
    rows = []
    for name, config in configs.items():
        parts = forward_flops_by_component(config, context_length)
        total = sum(parts.values())
        rows.append([name, human(total, "FLOP")] + [f"{human(parts[c])} ({100 * parts[c] / total:.1f}%)" for c in components])
    return table(["model", "forward FLOPs / sequence"] + components, rows)


def memory_table(configs: dict[str, ModelConfig], batch_size: int) -> str:
    rows = []
    for name, config in configs.items():
        memory = training_memory(config, batch_size)
        per_example = training_memory(config, 1).activations
        fixed = memory.parameters + memory.gradients + memory.optimizer_state
        rows.append([
            name, human(memory.parameters, "B"), human(memory.gradients, "B"), human(memory.optimizer_state, "B"),
            human(memory.activations, "B"), human(memory.total, "B"),
            f"{human(per_example, 'B')} · B + {human(fixed, 'B')}", f"{max_batch_size(config, MEMORY_80GB):,}",
        ])
    header = ["model", "parameters", "gradients", "AdamW state", f"activations (B={batch_size})", f"total (B={batch_size})",
              "a·B + b", "max B in 80 GB"]
    return table(header, rows)


def default_report() -> str:
    configs = {name: gpt2(name) for name in GPT2}
    xl = configs["GPT-2 XL"]
    xl_silu = gpt2("GPT-2 XL", ffn="silu")
    long = 16_384
    step = training_step_flops(xl, 1024)
    seconds = training_seconds(xl, 400_000, 1024, A100_FP32, 0.5)
    act = activation_floats(xl, 1)
    out = [
        "## Parameters (transformer_accounting a, d)",
        "Untied input and output embeddings, RoPE (no position parameters), SwiGLU with d_ff = 4·d_model.",
        "",
        params_table(configs),
        "",
        f"## Forward FLOPs of one {CONTEXT:,}-token sequence, matrix products only (b-d)",
        "",
        flops_table(configs),
        "",
        f"## GPT-2 XL at context {long:,} (e)",
        "",
        flops_table({f"GPT-2 XL, T={CONTEXT:,}": xl, f"GPT-2 XL, T={long:,}": replace(xl, context_length=long)}),
        "",
        f"Forward FLOPs grow {forward_flops(xl, long) / forward_flops(xl):.1f}x for 16x the tokens "
        f"({forward_flops(xl, long) / forward_flops(xl) / 16:.2f}x per token).",
        "",
        "## Training memory with AdamW, float32 (adamwAccounting a, b)",
        "Parameters P, gradients P, AdamW moments 2P floats; activations per the handout's list "
        "(per block: 2 RMSNorms, Q/K/V, QK^T and softmax per head, weighted sum, output projection, "
        "FFN intermediates; then final RMSNorm, logits, cross-entropy softmax). "
        "The SwiGLU FFN keeps W1x, W3x, SiLU and the product; the handout's plain SiLU FFN keeps W1x and SiLU.",
        "",
        memory_table({**configs, "GPT-2 XL, SiLU FFN (handout's activation list)": xl_silu}, batch_size=1),
        "",
        f"GPT-2 XL activations per example: {sum(act.values()):,} floats "
        f"= {', '.join(f'{k} {v:,}' for k, v in act.items())}.",
        "",
        "## AdamW FLOPs per step (adamwAccounting c)",
        "",
        f"- update alone: {ADAMW_FLOPS_PER_PARAM} FLOPs per parameter = {human(adamw_update_flops(xl), 'FLOP')} for GPT-2 XL;",
        f"- full step at batch 1,024 (forward + 2x backward + update): {human(step, 'FLOP')}.",
        "",
        "## GPT-2 XL, 400K steps, batch 1,024, one A100 at 50% MFU (adamwAccounting d)",
        "",
        f"{human(400_000 * step, 'FLOP')} at {human(0.5 * A100_FP32, 'FLOP/s')} effective: "
        f"{seconds:.3g} s = {seconds / 86_400:,.0f} days ({seconds / 86_400 / 365.25:.1f} years).",
    ]
    return "\n".join(out)


def config_report(config: ModelConfig, steps: int, batch_size: int, peak_flops: float, mfu: float) -> str:
    step = training_step_flops(config, batch_size)
    seconds = training_seconds(config, steps, batch_size, peak_flops, mfu)
    tokens = steps * batch_size * config.context_length
    return "\n".join([
        f"## {config}",
        "",
        params_table({"model": config}),
        "",
        flops_table({"model": config}),
        "",
        memory_table({"model": config}, batch_size),
        "",
        f"Training: {steps:,} steps x batch {batch_size:,} x {config.context_length:,} tokens = {tokens:,} tokens; "
        f"{human(step, 'FLOP')} per step, {human(steps * step, 'FLOP')} in all; at {human(peak_flops, 'FLOP/s')} peak and "
        f"{mfu:.0%} MFU: {seconds:,.0f} s = {seconds / 3600:.2f} h.",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.experiments.accounting", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--preset", help="DATASET/PRESET from pipelines/training/presets.py, e.g. tinystories/baseline")
    for field in fields(ModelConfig):  # the trainer's names for the same settings
        parser.add_argument(f"--model.{field.name}", dest=field.name, default=None, metavar="VALUE")
    parser.add_argument("--max_steps", type=int, help="training steps (default: the preset's, or 10,000)")
    parser.add_argument("--data.batch_size", dest="batch_size", type=int, help="sequences per step (default: the preset's, or 1)")
    parser.add_argument("--peak-flops", type=float, default=A100_FP32, help="chip peak FLOP/s (default: A100 fp32, 19.5e12)")
    parser.add_argument("--mfu", type=float, default=0.5, help="model FLOPs utilisation (default 0.5)")
    args = parser.parse_args(argv)
    model_flags = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if getattr(args, f.name) is not None}
    if args.preset is None and not model_flags:
        print(default_report())
        return
    try:
        overrides = parse_overrides([(f"model.{name}", value) for name, value in model_flags.items()])
        if args.preset:
            dataset, _, preset = args.preset.partition("/")
            train = resolve_config(dataset, preset or "baseline", overrides)
            config, steps, batch = train.model, train.max_steps, train.data.batch_size
        else:
            model = {name.removeprefix("model."): value for name, value in overrides.items()}
            required = ["vocab_size", "context_length", "d_model", "num_layers", "num_heads"]
            missing = [f"--model.{name}" for name in required if name not in model]
            if missing:
                raise ValueError(f"without --preset, give {', '.join(missing)} too")
            config, steps, batch = ModelConfig(**model), 10_000, 1
        print(config_report(config, args.max_steps or steps, args.batch_size or batch, args.peak_flops, args.mfu))
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
