"""The learning rate as a transformation: u -> -lr(count) * u, the last link of a chain."""

from collections.abc import Callable
from typing import NamedTuple

from core.optim.base import GradientTransformation, hyperparameter, scaled
from core.optim.foreach import Scalar
from core.tree import Tree, tree_flatten

Schedule = Callable[[int], Scalar]  # count -> a rate, or (K,) rates (core/schedule.py's stack_schedules)


class ScaleByLearningRateState(NamedTuple):
    count: int  # updates made so far: the next one uses learning_rate(count)


def scale_by_learning_rate(learning_rate: Scalar | Schedule) -> GradientTransformation:
    """Multiply the updates by -learning_rate (a descent step for `apply_updates`). A schedule is
    called with the number of updates made before this one: 0, 1, 2, ... A (K,) rate, or a
    schedule returning one, gives each stacked variant its own."""
    if not callable(learning_rate):
        learning_rate = hyperparameter("scale_by_learning_rate", "learning_rate", learning_rate, lambda v: v >= 0.0, "be non-negative")

    def init(params: Tree) -> ScaleByLearningRateState:
        return ScaleByLearningRateState(0)

    def update(
        updates: Tree, state: ScaleByLearningRateState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, ScaleByLearningRateState]:
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        leaves, spec = tree_flatten(updates)
        new_state = ScaleByLearningRateState(state.count + 1)
        if not leaves:
            return updates, new_state
        return scaled(leaves, spec, -lr, donate), new_state

    return GradientTransformation(init, update)
