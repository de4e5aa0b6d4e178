"""The learning rate (learning_rate.py) for K stacked variants: u -> -lr_k(count) * u, each variant
on its own schedule."""

from collections.abc import Callable

from core.optim.base import GradientTransformation, scaled
from core.optim.learning_rate import ScaleByLearningRateState
from core.optim.stacked import VariantValues, per_variant
from core.tree import Tree, tree_flatten

StackedSchedule = Callable[[int], VariantValues]  # step -> (K,) learning rates (core/stacked_schedule.py)


def stacked_scale_by_learning_rate(learning_rate: VariantValues | StackedSchedule) -> GradientTransformation:
    """Multiply variant k's updates by -learning_rate[k], or by -schedule(count)[k]."""
    if not callable(learning_rate) and not bool((learning_rate >= 0.0).all()):
        raise ValueError(f"stacked_scale_by_learning_rate: learning rates must be non-negative, got {learning_rate.tolist()}")

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
        return scaled(leaves, spec, per_variant(-lr, leaves), donate), new_state

    return GradientTransformation(init, update)
