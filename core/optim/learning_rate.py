"""The learning rate as a transformation: u -> -lr(count) * u, the last link of a chain."""

from collections.abc import Callable
from typing import NamedTuple

from core.optim.base import GradientTransformation, scaled
from core.tree import Tree, tree_flatten

Schedule = Callable[[int], float]


class ScaleByLearningRateState(NamedTuple):
    count: int  # updates made so far: the next one uses learning_rate(count)


def scale_by_learning_rate(learning_rate: float | Schedule) -> GradientTransformation:
    """Multiply the updates by -learning_rate (a descent step for `apply_updates`). A schedule is
    called with the number of updates made before this one: 0, 1, 2, ..."""
    if not callable(learning_rate) and not learning_rate >= 0.0:
        raise ValueError(f"scale_by_learning_rate: learning_rate must be non-negative, got {learning_rate!r}")

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
