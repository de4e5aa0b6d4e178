"""Parameter, FLOP, memory and training-time accounting, printed as Markdown tables.

    python -m pipelines.experiments.accounting                       # the handout's GPT-2 sizes (transformer_accounting, adamwAccounting)
    python -m pipelines.experiments.accounting --preset tinystories/baseline --peak_flops 989e12 --mfu 0.2
    python -m pipelines.experiments.accounting --preset owt/leaderboard     # its target: 1.5 h on one H100 at 35% MFU
    python -m pipelines.experiments.accounting --model.d_model 256 --model.num_layers 4 --model.num_heads 8 --model.vocab_size 10000 --model.context_length 256

With --preset or any model flag it reports on that one config (steps and batch from the preset
unless given). A preset with a hardware target (presets.py's TARGETS, e.g. owt/leaderboard: one
H100, 1.5 hours) is costed on that chip's dense bf16 peak at the target's MFU unless --chip,
--peak_flops or --mfu say otherwise, and the report ends with the budget: the MFU needed to fit
in it and whether the assumed one does. A preset name alone (`--preset leaderboard`) is looked
up in every dataset. Otherwise on GPT-2 small/medium/large/XL as the handout defines them (vocabulary
50,257, context 1,024, d_ff = 4 d_model, SwiGLU as built here), XL at context 16,384, the largest
XL batch in 80 GB and the A100 estimate. The formulas are in core/accounting.py.
"""

import sys
from argparse import RawDescriptionHelpFormatter
from collections.abc import Sequence
from dataclasses import fields, replace

import torch

from core.accounting import (
    ADAMW_FLOPS_PER_PARAM,
    BYTES_PER_FLOAT,
    activation_floats,
    adamw_update_flops,
    forward_flops,
    forward_flops_by_component,
    max_batch_size,
    newton_schulz_flops,
    params_by_component,
    training_memory,
    training_seconds,
    training_step_flops,
)
from core.config import ModelConfig
from core.errors import UsageError
from pipelines.command import command
from pipelines.flags import CommandParser, integer, number
from pipelines.training.config.config import model_config, parse_overrides, resolve_config
from pipelines.training.hardware.peak import datasheet_peak
from pipelines.training.config.presets import PRESETS, TARGETS

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


def config_report(
    config: ModelConfig, steps: int, batch_size: int, peak_flops: float, mfu: float,
    chip: str | None = None, budget_hours: float | None = None, muon: bool = False,
) -> str:
    step = training_step_flops(config, batch_size)
    seconds = training_seconds(config, steps, batch_size, peak_flops, mfu)
    tokens = steps * batch_size * config.context_length
    on = f"{chip} ({human(peak_flops, 'FLOP/s')} dense bf16 peak)" if chip else f"{human(peak_flops, 'FLOP/s')} peak"
    lines = [
        f"## {config}",
        "",
        params_table({"model": config}),
        "",
        flops_table({"model": config}),
        "",
        memory_table({"model": config}, batch_size),
        "",
        *fused_memory_note(config, batch_size),
        f"Training: {steps:,} steps x batch {batch_size:,} x {config.context_length:,} tokens = {tokens:,} tokens; "
        f"{human(step, 'FLOP')} per step, {human(steps * step, 'FLOP')} in all; on {on} at "
        f"{mfu:.0%} MFU: {seconds:,.0f} s = {seconds / 3600:.2f} h.",
    ]
    extra = newton_schulz_flops(config) if muon else 0
    if muon:
        lines += ["", f"Muon's Newton-Schulz iterations (5 per hidden matrix and step, not in the count above) add "
                      f"{human(extra, 'FLOP')} per step ({extra / step:.1%}): {seconds * extra / step / 3600:.2f} h more at the same MFU."]
    if budget_hours is not None:
        total_seconds = seconds * (step + extra) / step
        needed = steps * (step + extra) / (peak_flops * budget_hours * 3600)
        verdict = "fits" if total_seconds <= budget_hours * 3600 else "does NOT fit"
        lines += ["", f"Budget: {budget_hours:g} h on one {chip or 'chip'} = {human(peak_flops * budget_hours * 3600, 'FLOP')} at peak. "
                      f"Finishing within it needs {needed:.1%} MFU or more{' (Newton-Schulz included)' if muon else ''}; "
                      f"at the assumed {mfu:.0%} the run {verdict} ({total_seconds / 3600:.2f} h of matrix products; "
                      "compilation, evaluation and checkpoints come on top)."]
    return "\n".join(lines)


def fused_memory_note(config: ModelConfig, batch_size: int) -> list[str]:
    """The memory without the T x T attention scores and their softmax, which the trainer's fused
    attention (kernels "torch") never stores: the figure its memory check uses."""
    if config.kernels != "torch":
        return []
    scores = BYTES_PER_FLOAT * config.num_layers * 2 * batch_size * config.num_heads * config.context_length**2
    total = training_memory(config, batch_size).total - scores
    return [f"With fused attention (kernels=torch, the trainer's default) the T x T scores and softmax are not stored: "
            f"{human(total, 'B')} in all at batch {batch_size:,} by the same float32 count.", ""]


def find_preset(name: str) -> tuple[str, str]:
    """(dataset, preset) of "DATASET/PRESET", or of a bare preset name that one dataset alone has."""
    dataset, sep, preset = name.partition("/")
    if sep:
        return dataset, preset or "baseline"
    owners = [d for d, presets in PRESETS.items() if name in presets]
    if len(owners) == 1:
        return owners[0], name
    if name in PRESETS:  # a dataset alone: its baseline
        return name, "baseline"
    raise UsageError(f"--preset {name!r}: name it as DATASET/PRESET, one of "
                     f"{sorted(f'{d}/{p}' for d, presets in PRESETS.items() for p in presets)}")


def parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m pipelines.experiments.accounting", description=__doc__.split("\n\n")[0],
        formatter_class=RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--preset", help="DATASET/PRESET from pipelines/training/config/presets.py, e.g. tinystories/baseline")
    for field in fields(ModelConfig):  # the trainer's names for the same settings
        parser.add_argument(f"--model.{field.name}", dest=field.name, default=None, metavar="VALUE")
    parser.add_argument("--max_steps", type=integer(1), help="training steps (default: the preset's, or 10,000)")
    parser.add_argument("--data.batch_size", dest="batch_size", type=integer(1), help="sequences per step (default: the preset's, or 1)")
    parser.add_argument("--peak_flops", type=number(0, open_low=True), help="chip peak FLOP/s (default: --chip's, else A100 fp32, 19.5e12)")
    parser.add_argument("--chip", help="a GPU by name (H100, A100, ...): its dense bf16 peak (pipelines/training/hardware/peak.py)")
    parser.add_argument("--mfu", type=number(0, 1, open_low=True), help="model FLOPs utilisation, in (0, 1] (default: the preset's target, else 0.5)")
    parser.add_argument("--budget_hours", type=number(0, open_low=True), help="a time budget to check (default: the preset's target)")
    return parser


# The flags that cost one config: meaningless for the default report of the GPT-2 sizes.
ONE_CONFIG_FLAGS = ("max_steps", "batch_size", "peak_flops", "chip", "mfu", "budget_hours")


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    model_flags = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if getattr(args, f.name) is not None}
    if args.chip is not None:
        chip_peak(args.chip)  # an unknown chip is refused whatever else is given
    if args.preset is None and not model_flags:
        given = [name for name in ONE_CONFIG_FLAGS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} costs one config: give --preset DATASET/PRESET or the --model.* flags too")
        print(default_report())
        return
    overrides = parse_overrides([(f"model.{name}", value) for name, value in model_flags.items()])
    target, muon = None, False
    if args.preset:
        dataset, preset = find_preset(args.preset)
        train = resolve_config(dataset, preset, overrides)
        config, steps, batch = train.model, train.max_steps, train.data.batch_size
        target, muon = TARGETS.get(f"{dataset}/{preset}"), train.optim.name == "muon"
    else:
        config, steps, batch = model_from_flags(overrides), 10_000, 1
    chip = args.chip or (target.chip if target and args.peak_flops is None else None)
    peak = args.peak_flops if args.peak_flops is not None else (chip_peak(chip) if chip else A100_FP32)
    mfu = args.mfu if args.mfu is not None else (target.mfu if target else 0.5)
    budget = args.budget_hours if args.budget_hours is not None else (target.hours if target else None)
    steps = args.max_steps if args.max_steps is not None else steps
    batch = args.batch_size if args.batch_size is not None else batch
    print(config_report(config, steps, batch, peak, mfu, chip, budget, muon))


def model_from_flags(overrides: dict) -> ModelConfig:
    """The ModelConfig the --model.* flags give alone (every required field named)."""
    model = {name.removeprefix("model."): value for name, value in overrides.items()}
    required = ["vocab_size", "context_length", "d_model", "num_layers", "num_heads"]
    missing = [f"--model.{name}" for name in required if name not in model]
    if missing:
        raise UsageError(f"without --preset, give {', '.join(missing)} too")
    return model_config(model)


def chip_peak(chip: str) -> float:
    """The dense bf16 peak FLOP/s of the GPU `chip` (the trainer's matmuls run in bf16 on CUDA)."""
    peak = datasheet_peak(chip, torch.bfloat16)
    if peak is None:
        raise UsageError(f"--chip {chip!r}: unknown; name a GPU such as H100 or A100, or give --peak_flops instead")
    return peak


if __name__ == "__main__":
    sys.exit(main())
