"""The learning-rate schedule: linear warm-up, cosine annealing, then a constant floor (LLaMA)."""

import math


def cosine_schedule(
    it: int,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    cosine_cycle_iters: int,
) -> float:
    """Learning rate at iteration `it`, exactly as in the handout (§4.4):

    it < Tw:         it / Tw * max
    Tw <= it <= Tc:  min + 1/2 (1 + cos((it - Tw) / (Tc - Tw) * pi)) (max - min)
    it > Tc:         min
    """
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it > cosine_cycle_iters:
        return min_learning_rate
    if cosine_cycle_iters == warmup_iters:  # an empty annealing phase: only it == Tc lands here
        return max_learning_rate
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_learning_rate + 0.5 * (1.0 + math.cos(progress * math.pi)) * (max_learning_rate - min_learning_rate)
