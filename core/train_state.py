"""The state a training run carries from step to step, as one immutable value (like flax's TrainState).

The step function returns a new TrainState, a checkpoint saves one, resume loads one. Nothing in it
is a live object: the data order comes from `rng`, a key from which each step's batch generator
is seeded (see pipelines/training/data/batches.py), so no generator state needs saving."""

from dataclasses import dataclass, replace
from typing import Any

from core.optim import GradientTransformation
from core.tree import Tree


@dataclass(frozen=True)
class TrainState:
    params: Tree
    opt_state: Any  # the optimizer's state pytree (its step counts included)
    step: int = 0  # updates applied so far
    rng: int = 0  # the key every random draw of the run derives from
    elapsed: float = 0.0  # seconds of training so far, across resumes

    def replace(self, **changes: Any) -> "TrainState":
        return replace(self, **changes)


def init_train_state(params: Tree, optimizer: GradientTransformation, rng: int) -> TrainState:
    """Step 0: `params`, a fresh optimizer state for them, and the run's key."""
    return TrainState(params=params, opt_state=optimizer.init(params), rng=rng)
