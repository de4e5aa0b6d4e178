"""Named starting points for TrainConfig, per dataset, and the choice of one for the device.

A preset is nested plain values in TrainConfig's shape; flags and config files apply over it."""

from dataclasses import dataclass
from typing import Any

# The handout's TinyStories baseline (§7.2): 17M non-embedding parameters, batch x steps x context
# = 128 x 10,000 x 256 = 327,680,000 tokens: hours on one GPU, days on a CPU. The handout leaves the
# optimiser to be tuned; these are common starting points (LLaMA-style betas and weight decay).
BASELINE: dict[str, Any] = {
    "model": dict(vocab_size=10_000, context_length=256, d_model=512, d_ff=1344, num_layers=4, num_heads=16, rope_theta=10_000.0),
    "data": {"batch_size": 128},
    "schedule": {"lr": 1e-3, "warmup_steps": 200},
    "eval": {"every": 500},
    "max_steps": 10_000,
    "checkpoint_every": 1000,
}

# Downscaled to show learning within minutes on two CPU cores. Without --data.path it downloads
# only the validation text and the first 16 MB of the training text (~4M tokens; a run reads 2.5M).
CPU_SMALL: dict[str, Any] = {
    "model": dict(vocab_size=2048, context_length=128, d_model=128, num_layers=4, num_heads=4, rope_theta=10_000.0),
    "data": {"batch_size": 32, "train_mb": 16},
    "schedule": {"lr": 3e-3, "warmup_steps": 30},
    "eval": {"every": 100, "windows": 128},
    "sample": {"tokens": 96},
    "max_steps": 600,
    "checkpoint_every": 200,
}

# OpenWebText (`owt`): the handout's files (owt_train.txt, owt_valid.txt), downloaded gzipped and
# unpacked by pipelines/training/data/download.py. "baseline" is the handout's main_experiment: the
# TinyStories architecture and budget with the 32K tokenizer. Web text has no story to start.
OWT_BASELINE: dict[str, Any] = {
    **BASELINE,
    "model": {**BASELINE["model"], "vocab_size": 32_000},
    "sample": {"prompt": "The"},
}
OWT_CPU_SMALL: dict[str, Any] = {**CPU_SMALL, "sample": {**CPU_SMALL["sample"], "prompt": "The"}}

# The leaderboard (handout §7.5): lowest OWT validation loss within 1.5 hours on one H100. What
# the 2024-25 speedrun records share, as switches of the same model (core/config.py): Muon on the
# hidden matrices with AdamW on embeddings and gains, tied embeddings, ReLU² feed-forward, QK-norm,
# a logit soft-cap of 30, zero-initialised output projections, value residuals, bf16 autocast (the
# trainer's on CUDA) and torch.compile; a constant rate then a linear decay to 0 over the last 40%.
# Sized by `just accounting --preset owt/leaderboard` (LEADERBOARD_TARGET): GPT-2-small width,
# 110M parameters, 50,000 x 64 x 512 = 1.64B tokens, 1.17 EFLOP (+7% for Muon's Newton-Schulz):
# 1.00 h at 35% MFU, and 1.5 h at 23.4%, leaving room for compilation, evaluation, checkpoints and
# the optimizer's per-step overhead. Batch 64 keeps the float32 estimate of training memory near 37 GB (fused attention;
# the logits alone are 64 x 512 x 32K), well inside 80 GB. Not run here (no GPU); untuned.
LEADERBOARD: dict[str, Any] = {
    "model": dict(
        vocab_size=32_000, context_length=512, d_model=768, num_layers=12, num_heads=12, rope_theta=10_000.0,
        ffn="relu2", tie_embeddings=True, qk_norm=True, logit_softcap=30.0, zero_init_out_proj=True, value_residual=True,
    ),
    "optim": {"name": "muon", "muon_lr": 0.02, "muon_momentum": 0.95},
    "schedule": {"kind": "wsd", "lr": 3e-3, "final_lr": 0.0, "warmup_steps": 500, "decay_fraction": 0.4},
    "data": {"batch_size": 64},
    "eval": {"every": 2000, "windows": 512},
    "sample": {"prompt": "The"},
    "max_steps": 50_000,
    "checkpoint_every": 5000,
    "compile": True,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tinystories": {"baseline": BASELINE, "cpu-small": CPU_SMALL},
    "owt": {"baseline": OWT_BASELINE, "cpu-small": OWT_CPU_SMALL, "leaderboard": LEADERBOARD},
}


@dataclass(frozen=True)
class Target:
    """The hardware and time a preset is meant for: what `just accounting --preset` assumes."""

    chip: str  # a name pipelines/training/hardware/peak.py knows, e.g. "H100"
    mfu: float  # the model FLOPs utilisation assumed (an estimate, not a measurement)
    hours: float  # the wall-clock budget


LEADERBOARD_TARGET = Target(chip="H100", mfu=0.35, hours=1.5)
TARGETS: dict[str, Target] = {"owt/leaderboard": LEADERBOARD_TARGET}


def preset_for_device(device_type: str) -> tuple[str, str | None]:
    """The preset a run without --preset uses on this kind of device, and a notice to print when
    that is not the baseline: the GPU baseline on CUDA, a CPU-sized run elsewhere."""
    if device_type == "cuda":
        return "baseline", None
    return "cpu-small", (
        f"note: no CUDA device, so the cpu-small preset (minutes here; the handout's baseline would take days "
        f"on a {device_type}); pass --preset baseline to force the baseline"
    )
