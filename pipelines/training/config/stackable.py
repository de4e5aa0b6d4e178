"""Which TrainConfigs can train together as one stacked group (a vectorised sweep).

The variants of a group share one model shape, one batch shape and one loop, so they may differ
only in what each variant keeps for itself: its seed (initial weights and data order), its
optimizer hyperparameters and schedule (the stacked optimizer takes one value per variant), its
run directory and the samples written at its end. Anything else (d_model, layers, norm placement,
batch size, max_steps, the evaluation and checkpoint intervals...) needs runs of their own.
"""

from collections.abc import Sequence
from typing import Any

from pipelines.training.config.config import TrainConfig, field_types

PER_VARIANT = frozenset({
    "seed", "run_dir",
    "schedule.lr", "schedule.final_lr", "schedule.warmup_steps", "schedule.decay_steps", "schedule.kind", "schedule.decay_fraction",
    "optim.beta1", "optim.beta2", "optim.eps", "optim.weight_decay", "optim.max_grad_norm",
    "sample.count", "sample.prompt", "sample.tokens", "sample.temperature", "sample.top_p",
    "wandb_project",
})


def why_not_stackable(configs: Sequence[TrainConfig]) -> str | None:
    """None when `configs` can train as one group; else why not, in one line."""
    if not configs:
        return "no variants"
    differing = [name for name in field_types() if name not in PER_VARIANT and len({repr(_get(c, name)) for c in configs}) > 1]
    if differing:
        return f"the variants differ in {', '.join(differing)}, which cannot be stacked (shapes or the shared loop)"
    if configs[0].grad_accum != 1:
        return f"grad_accum={configs[0].grad_accum}: the stacked step takes one batch per step (no gradient accumulation)"
    if configs[0].gns:
        return "--gns measures gradients at two batch sizes, which the stacked step does not keep"
    if configs[0].optim.name != "adamw":
        return f"optim.name={configs[0].optim.name}: the stacked optimizer is AdamW only"
    if configs[0].wandb:
        return "--wandb logs one run per process"
    return None


def _get(config: TrainConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
