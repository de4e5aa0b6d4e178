"""The learning-rate schedule of core/schedule.py for K variants at once: each with its own peak,
final rate, warm-up and decay length, evaluated at one step as a (K,) tensor.

Computed in float64 with the same formula, so each entry equals `cosine_schedule` of that
variant's settings (Python floats are float64) up to the last bit or two of the cosine."""

import math
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def stacked_warmup_cosine(
    lr: Sequence[float], final_lr: Sequence[float], warmup_steps: Sequence[int], decay_steps: Sequence[int]
) -> Callable[[int], Float[Tensor, " variants"]]:
    """step -> (K,) float64 learning rates: linear warm-up to lr[k] over warmup_steps[k], cosine
    decay to final_lr[k] at decay_steps[k], then final_lr[k] (core/schedule.py's cosine_schedule)."""
    peak, final, warmup, decay = (torch.tensor(list(v), dtype=torch.float64) for v in (lr, final_lr, warmup_steps, decay_steps))
    if not (peak.shape == final.shape == warmup.shape == decay.shape and peak.ndim == 1):
        raise ValueError("stacked_warmup_cosine: one lr, final_lr, warmup_steps and decay_steps per variant")
    if not bool(((peak >= 0) & (final >= 0)).all()):
        raise ValueError(f"stacked_warmup_cosine: learning rates must be non-negative, got {peak.tolist()}, {final.tolist()}")
    if not bool(((0 <= warmup) & (warmup <= decay)).all()):
        raise ValueError(f"stacked_warmup_cosine: need 0 <= warmup_steps <= decay_steps, got {warmup.tolist()}, {decay.tolist()}")

    def schedule(step: int) -> Tensor:
        warming = step / warmup.clamp(min=1) * peak  # used only where step < warmup, so warmup > 0
        span = (decay - warmup).clamp(min=1)  # where decay == warmup only step == decay gets here
        progress = (step - warmup) / span
        cosine = final + 0.5 * (1.0 + torch.cos(progress * math.pi)) * (peak - final)
        annealing = torch.where(decay == warmup, peak, cosine)
        return torch.where(step < warmup, warming, torch.where(step > decay, final, annealing))

    return schedule
