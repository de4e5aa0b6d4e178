"""Learning-rate schedules, each a function of the step: linear warm-up, cosine annealing, then a
constant floor (LLaMA; the default); or linear warm-up, a constant rate, then a linear decay (WSD).
K variants' schedules run as one with `stack_schedules`."""

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor


def cosine_schedule(step: int, lr: float, final_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate at `step` (counted from 0), as in the handout (§4.4), with W = warmup_steps
    and D = decay_steps, the step at which the cosine reaches final_lr (warm-up included, as in
    optax's warmup_cosine_decay_schedule):

    step < W:         step / W * lr
    W <= step <= D:   final_lr + 1/2 (1 + cos((step - W) / (D - W) * pi)) (lr - final_lr)
    step > D:         final_lr
    """
    if step < warmup_steps:
        return step / warmup_steps * lr
    if step > decay_steps:
        return final_lr
    if decay_steps == warmup_steps:  # an empty annealing phase: only step == D lands here
        return lr
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return final_lr + 0.5 * (1.0 + math.cos(progress * math.pi)) * (lr - final_lr)


def warmup_cosine(lr: float, final_lr: float, warmup_steps: int, decay_steps: int) -> Callable[[int], float]:
    """`cosine_schedule` as a function of the step alone, for `scale_by_learning_rate`."""
    if not (lr >= 0.0 and final_lr >= 0.0):
        raise ValueError(f"warmup_cosine: learning rates must be non-negative, got {lr!r}, {final_lr!r}")
    if not 0 <= warmup_steps <= decay_steps:
        raise ValueError(f"warmup_cosine: need 0 <= warmup_steps <= decay_steps, got {warmup_steps}, {decay_steps}")
    return partial(cosine_schedule, lr=lr, final_lr=final_lr, warmup_steps=warmup_steps, decay_steps=decay_steps)


def wsd_schedule(step: int, lr: float, final_lr: float, warmup_steps: int, decay_start: int, decay_steps: int) -> float:
    """Learning rate at `step` of warm-up, stable, decay (constant, then linear decay), as in the
    speedrun records and MiniCPM's WSD, with W = warmup_steps, S = decay_start, D = decay_steps:

    step < W:         step / W * lr
    W <= step <= S:   lr
    S < step <= D:    lr + (step - S) / (D - S) * (final_lr - lr)
    step > D:         final_lr
    """
    if step < warmup_steps:
        return step / warmup_steps * lr
    if step <= decay_start:
        return lr
    if step > decay_steps:
        return final_lr
    return lr + (step - decay_start) / (decay_steps - decay_start) * (final_lr - lr)


def warmup_stable_decay(lr: float, final_lr: float, warmup_steps: int, decay_start: int, decay_steps: int) -> Callable[[int], float]:
    """`wsd_schedule` as a function of the step alone, for `scale_by_learning_rate`."""
    if not (lr >= 0.0 and final_lr >= 0.0):
        raise ValueError(f"warmup_stable_decay: learning rates must be non-negative, got {lr!r}, {final_lr!r}")
    if not 0 <= warmup_steps <= decay_start <= decay_steps:
        raise ValueError(
            "warmup_stable_decay: need 0 <= warmup_steps <= decay_start <= decay_steps, "
            f"got {warmup_steps}, {decay_start}, {decay_steps}"
        )
    return partial(wsd_schedule, lr=lr, final_lr=final_lr, warmup_steps=warmup_steps, decay_start=decay_start, decay_steps=decay_steps)


def stack_schedules(schedules: Sequence[Callable[[int], float]]) -> Callable[[int], Float[Tensor, " variants"]]:
    """K schedules as one, for K variants trained together: step -> (K,) float64 rates, entry k
    being schedules[k](step), computed in Python floats as a run alone computes it (the same to
    the bit); `scale_by_learning_rate` gives each variant its own."""
    schedules = tuple(schedules)
    if not schedules:
        raise ValueError("stack_schedules: needs one schedule per variant")

    def schedule(step: int) -> Tensor:
        return torch.tensor([one(step) for one in schedules], dtype=torch.float64)

    return schedule
