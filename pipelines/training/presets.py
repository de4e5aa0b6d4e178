"""Named starting points for TrainConfig, per dataset, and the choice of one for the device.

A preset is nested plain values in TrainConfig's shape; flags and config files apply over it."""

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

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tinystories": {"baseline": BASELINE, "cpu-small": CPU_SMALL},
}


def preset_for_device(device_type: str) -> tuple[str, str | None]:
    """The preset a run without --preset uses on this kind of device, and a notice to print when
    that is not the baseline: the GPU baseline on CUDA, a CPU-sized run elsewhere."""
    if device_type == "cuda":
        return "baseline", None
    return "cpu-small", (
        f"note: no CUDA device, so the cpu-small preset (minutes here; the handout's baseline would take days "
        f"on a {device_type}); pass --preset baseline to force the baseline"
    )
