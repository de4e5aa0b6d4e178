"""The state of K variants training together (a vectorised sweep), as one immutable value.

Parameters and optimizer state are stacked (core/stack.py): leaf (K, *shape), slice k being
variant k's. The variants share the step and the elapsed time; each keeps its own data key.
`active` says which variants still train: a variant that diverged is masked out and its slice is
never updated again (core/stacked_train_step.py).

`variant_state(state, k)` is variant k as an ordinary TrainState, what its checkpoint holds, and
`stack_states` builds the group back from K ordinary states (a resumed group).
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from core.stack import stack_trees, unstack_tree
from core.train_state import TrainState
from core.tree import Tree, tree_leaves


@dataclass(frozen=True)
class StackedTrainState:
    params: Tree  # leaves (K, *shape)
    opt_state: Any  # a stacked optimizer's state (core/optim/stacked_*.py)
    active: Bool[Tensor, " variants"]  # False once a variant has diverged: its updates stop
    step: int = 0  # updates applied so far (to the active variants)
    rngs: tuple[int, ...] = ()  # each variant's data key (TrainState.rng)
    elapsed: float = 0.0  # seconds of training so far, across resumes

    @property
    def variants(self) -> int:
        return len(self.rngs)

    def replace(self, **changes: Any) -> "StackedTrainState":
        return replace(self, **changes)


def stack_states(states: Sequence[TrainState]) -> StackedTrainState:
    """K TrainStates at one step as a group, all active; the group's elapsed time is the longest."""
    steps = {state.step for state in states}
    if len(steps) != 1:
        raise ValueError(f"stack_states: the states must be at one step to train together, got steps {sorted(steps)}")
    params = stack_trees([state.params for state in states])
    active = torch.ones(len(states), dtype=torch.bool, device=tree_leaves(params)[0].device)
    return StackedTrainState(
        params, stack_trees([state.opt_state for state in states]), active, states[0].step,
        tuple(state.rng for state in states), max(state.elapsed for state in states),
    )


def variant_state(state: StackedTrainState, index: int) -> TrainState:
    """Variant `index` as an ordinary TrainState with tensors of its own."""
    return TrainState(unstack_tree(state.params, index), unstack_tree(state.opt_state, index), state.step, state.rngs[index], state.elapsed)
