"""The optimizer and learning-rate schedule a TrainConfig describes, built from core/optim."""

from collections.abc import Callable

from core.optim import GradientTransformation, adamw, chain, clip_by_global_norm, decay_matrices, muon, muon_labels, partition
from core.schedule import warmup_cosine, warmup_stable_decay
from pipelines.training.config.config import TrainConfig


def make_schedule(config: TrainConfig) -> Callable[[int], float]:
    """Step -> learning rate: warm-up to schedule.lr, then cosine decay to the final rate
    (schedule.kind "cosine") or constant, then linear decay to it ("wsd")."""
    schedule = config.schedule
    if schedule.kind == "wsd":
        return warmup_stable_decay(schedule.lr, config.final_lr, schedule.warmup_steps, config.decay_start, config.decay_steps)
    return warmup_cosine(schedule.lr, config.final_lr, schedule.warmup_steps, config.decay_steps)


def make_optimizer(config: TrainConfig) -> GradientTransformation:
    """Clip by global norm, then AdamW on the schedule ("adamw"), or ("muon") Muon on the hidden
    matrices and AdamW on the rest, routed by `muon_labels`. Clipping comes first, over all the
    gradients together, as before. Weight decay skips the RMSNorm gains (1-D leaves) unless
    optim.decay_gains: a gain pulled towards 0 only rescales a normalised activation, which the
    next matrix can undo."""
    optim = config.optim
    adam = make_adamw(config)
    if optim.name == "adamw":
        return chain(clip_by_global_norm(optim.max_grad_norm), adam)
    # The same warm-up and decay for both, each scaled to its own peak.
    muon_schedule = _scaled(make_schedule(config), optim.muon_lr / config.schedule.lr)
    hidden = muon(muon_schedule, momentum=optim.muon_momentum, weight_decay=optim.muon_weight_decay)
    return chain(clip_by_global_norm(optim.max_grad_norm), partition({"muon": hidden, "adam": adam}, muon_labels))


def make_adamw(config: TrainConfig) -> GradientTransformation:
    """AdamW on the schedule, with the config's betas, eps and weight decay (not on the gains
    unless optim.decay_gains)."""
    optim = config.optim
    mask = None if optim.decay_gains else decay_matrices
    return adamw(make_schedule(config), b1=optim.beta1, b2=optim.beta2, eps=optim.eps, weight_decay=optim.weight_decay, mask=mask)


def _scaled(schedule: Callable[[int], float], factor: float) -> Callable[[int], float]:
    return lambda step: factor * schedule(step)
