"""The state a training run carries from step to step, as one immutable value (like flax's TrainState).

The step function returns a new TrainState, a checkpoint saves one, resume loads one. Nothing in it
is a live object: the data order comes from `rng`, a key from which each step's batch generator
is seeded (see pipelines/training/data/batches.py), so no generator state needs saving.

K variants training together (a vectorised sweep) are one TrainState too: parameters and optimizer
state stacked (core/stack.py, slice k being variant k's), one key per variant, and `active`, which
says which variants still train. They share the step and the elapsed time. `variant_state(state,
k)` is variant k as an ordinary TrainState, what its checkpoint holds; `stack_states` builds the
group back from K ordinary states (a resumed group)."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from core.optim import GradientTransformation
from core.stack import stack_trees, unstack_tree
from core.tree import Tree, tree_leaves


@dataclass(frozen=True)
class TrainState:
    params: Tree  # one model's; stacked, (K, *shape) leaves
    opt_state: Any  # the optimizer's state pytree (its step counts included)
    step: int = 0  # updates applied so far
    rng: int | tuple[int, ...] = 0  # the key every random draw of the run derives from; stacked, one per variant
    elapsed: float = 0.0  # seconds of training so far, across resumes
    active: Bool[Tensor, " variants"] | None = None  # stacked only: False once a variant stopped (its state frozen)

    def replace(self, **changes: Any) -> "TrainState":
        return replace(self, **changes)


def init_train_state(params: Tree, optimizer: GradientTransformation, rng: int | Sequence[int]) -> TrainState:
    """Step 0: `params`, a fresh optimizer state for them, and the run's key; given one key per
    variant, `params` are K stacked models, all active."""
    if isinstance(rng, int):
        return TrainState(params=params, opt_state=optimizer.init(params), rng=rng)
    active = _all_active(params, len(rng))
    return TrainState(params=params, opt_state=optimizer.init(params), rng=tuple(rng), active=active)


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """K TrainStates at one step as a group, all active; the group's elapsed time is the longest."""
    steps = {state.step for state in states}
    if len(steps) != 1:
        raise ValueError(f"stack_states: the states must be at one step to train together, got steps {sorted(steps)}")
    params = stack_trees([state.params for state in states])
    return TrainState(
        params, stack_trees([state.opt_state for state in states]), states[0].step,
        tuple(state.rng for state in states), max(state.elapsed for state in states), _all_active(params, len(states)),
    )


def _all_active(params: Tree, variants: int) -> Bool[Tensor, " variants"]:
    """`active` for `variants` stacked models that all train, on their parameters' device."""
    return torch.ones(variants, dtype=torch.bool, device=tree_leaves(params)[0].device)


def variant_state(state: TrainState, index: int) -> TrainState:
    """Variant `index` of a stacked state as an ordinary TrainState with tensors of its own."""
    return TrainState(unstack_tree(state.params, index), unstack_tree(state.opt_state, index), state.step, state.rng[index], state.elapsed)
