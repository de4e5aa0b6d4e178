"""The optimizer and learning-rate schedule a TrainConfig describes, built from core/optim; and
which configs can train together as K stacked variants, one optimizer updating them all.

Given K configs (a vectorised sweep), each hyperparameter becomes a (K,) tensor of theirs and the
schedule gives each variant its own rate (core/optim/foreach.py): variant k is updated as
`make_optimizer(configs[k])` would update it alone. The variants share one model shape, one batch
shape and one loop, so they may differ only in what each keeps for itself (PER_VARIANT): its seed
(initial weights and data order), its optimizer hyperparameters and schedule, its run directory and
the samples written at its end.
"""

from collections.abc import Callable, Sequence
from typing import Any

from core.errors import UsageError
from core.optim import GradientTransformation, Scalar, adamw, chain, clip_by_global_norm, decay_matrices, muon, muon_labels, partition
from core.schedule import stack_schedules, warmup_cosine, warmup_stable_decay
from core.stack import variant_values
from pipelines.training.config.config import TrainConfig, field_types

Configs = TrainConfig | Sequence[TrainConfig]  # one run, or K variants trained together

PER_VARIANT = frozenset({
    "seed", "run_dir",
    "schedule.lr", "schedule.final_lr", "schedule.warmup_steps", "schedule.decay_steps", "schedule.kind", "schedule.decay_fraction",
    "optim.beta1", "optim.beta2", "optim.eps", "optim.weight_decay", "optim.max_grad_norm",
    "sample.count", "sample.prompt", "sample.tokens", "sample.temperature", "sample.top_p",
    "wandb_project",
})


def make_schedule(config: TrainConfig) -> Callable[[int], float]:
    """Step -> learning rate: warm-up to schedule.lr, then cosine decay to the final rate
    (schedule.kind "cosine") or constant, then linear decay to it ("wsd")."""
    schedule = config.schedule
    if schedule.kind == "wsd":
        return warmup_stable_decay(schedule.lr, config.resolved_final_lr, schedule.warmup_steps, config.decay_start,
                                   config.resolved_decay_steps)
    return warmup_cosine(schedule.lr, config.resolved_final_lr, schedule.warmup_steps, config.resolved_decay_steps)


def make_optimizer(configs: Configs) -> GradientTransformation:
    """Clip by global norm, then AdamW on the schedule ("adamw"), or ("muon") Muon on the hidden
    matrices and AdamW on the rest, routed by `muon_labels`. Clipping comes first, over all the
    gradients together (per variant, given K configs). Weight decay skips the RMSNorm gains (1-D
    leaves) unless optim.decay_gains: a gain pulled towards 0 only rescales a normalised
    activation, which the next matrix can undo."""
    configs = _as_tuple(configs)
    check_stackable(configs)
    clip = clip_by_global_norm(_values(configs, "max_grad_norm"))
    adam = make_adamw(configs)
    config = configs[0]
    if config.optim.name == "adamw":
        return chain(clip, adam)
    # The same warm-up and decay for both, each scaled to its own peak.
    muon_schedule = _scaled(make_schedule(config), config.optim.muon_lr / config.schedule.lr)
    hidden = muon(muon_schedule, momentum=config.optim.muon_momentum, weight_decay=config.optim.muon_weight_decay)
    return chain(clip, partition({"muon": hidden, "adam": adam}, muon_labels))


def make_adamw(configs: Configs) -> GradientTransformation:
    """AdamW on the schedule, with the config's betas, eps and weight decay (not on the gains
    unless optim.decay_gains); per variant, given K configs."""
    configs = _as_tuple(configs)
    if len(configs) == 1:
        schedule = make_schedule(configs[0])
    else:
        schedule = stack_schedules([make_schedule(config) for config in configs])
    mask = None if configs[0].optim.decay_gains else decay_matrices
    return adamw(schedule, b1=_values(configs, "beta1"), b2=_values(configs, "beta2"), eps=_values(configs, "eps"),
                 weight_decay=_values(configs, "weight_decay"), mask=mask)


def check_stackable(configs: Configs) -> None:
    """Refuses (UsageError) `configs` that cannot train as one group, saying why."""
    reason = why_not_stackable(_as_tuple(configs))
    if reason is not None:
        raise UsageError(f"these variants cannot train as one group: {reason}")


def why_not_stackable(configs: Sequence[TrainConfig]) -> str | None:
    """None when `configs` can train as one group (one config always can); else why not, in one line."""
    if not configs:
        return "no variants"
    if len(configs) == 1:
        return None
    differing = [name for name in field_types() if name not in PER_VARIANT and len({repr(_get(c, name)) for c in configs}) > 1]
    if differing:
        return f"the variants differ in {', '.join(differing)}, which cannot be stacked (shapes or the shared loop)"
    if configs[0].grad_accum != 1:
        return f"grad_accum={configs[0].grad_accum}: the stacked step takes one batch per step (no gradient accumulation)"
    if configs[0].gns:
        return "--gns measures gradients at two batch sizes, which the stacked step does not keep"
    if configs[0].optim.name != "adamw":
        return f"optim.name={configs[0].optim.name}: the stacked optimizer is AdamW only (Muon's routing describes one model)"
    if configs[0].wandb:
        return "--wandb logs one run per process"
    return None


def _as_tuple(configs: Configs) -> tuple[TrainConfig, ...]:
    return (configs,) if isinstance(configs, TrainConfig) else tuple(configs)


def _values(configs: tuple[TrainConfig, ...], name: str) -> Scalar:
    """optim.<name>: a number for one config, a (K,) tensor of theirs for K."""
    values = [getattr(config.optim, name) for config in configs]
    return values[0] if len(values) == 1 else variant_values(values)


def _scaled(schedule: Callable[[int], float], factor: float) -> Callable[[int], float]:
    return lambda step: factor * schedule(step)


def _get(config: TrainConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
