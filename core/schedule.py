"""The learning-rate schedule: linear warm-up, cosine annealing, then a constant floor (LLaMA)."""

import math
from collections.abc import Callable
from functools import partial


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
