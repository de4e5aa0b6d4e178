"""K learning-rate schedules as one: step -> a (K,) tensor, variant k's rate at that step.

Each variant keeps its own schedule function (core/schedule.py's warm-up cosine or WSD, with its
own peak, final rate, warm-up and decay), evaluated in Python floats as its sequential run
evaluates it, so the rates are the same to the bit; only the K numbers are packed into a float64
tensor for the stacked optimizer (core/optim/stacked_learning_rate.py). K calls of a few float
operations per step cost nothing beside the step.
"""

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim.learning_rate import Schedule


def stack_schedules(schedules: Sequence[Schedule]) -> Callable[[int], Float[Tensor, " variants"]]:
    """step -> (K,) float64 learning rates, entry k being schedules[k](step)."""
    schedules = tuple(schedules)
    if not schedules:
        raise ValueError("stack_schedules: needs one schedule per variant")

    def schedule(step: int) -> Tensor:
        return torch.tensor([one(step) for one in schedules], dtype=torch.float64)

    return schedule
