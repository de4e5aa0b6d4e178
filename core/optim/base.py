"""Gradient transformations, optax style: an `init` / `update` pair of pure functions.

    optimizer = chain(clip_by_global_norm(1.0), adamw(warmup_cosine(...)))
    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    params = apply_updates(params, updates)

Trees are pytrees (`core.tree`). A state is a NamedTuple, tuple, dict or list whose leaves are
tensors or Python numbers, so a checkpoint can save it leaf by leaf under key paths and rebuild it
into `optimizer.init(params)` as a template.

Donation, as `jax.jit(donate_argnums=...)` offers it. By default nothing passed in is modified:
every update returns new tensors, so the caller may keep the previous parameters and state. With
`update(..., donate=True)` and `apply_updates(..., donate=True)` the caller says it no longer needs
the incoming updates, state and parameters, and the transformations write into their storage in
place: a step then allocates no new parameter-sized buffers beyond one temporary (what
torch.optim.AdamW(foreach=True) allocates too). The trainer donates (core/train_step.py).

Each transformation works on the whole leaf list with `torch._foreach_*` ops (core/optim/foreach.py):
one kernel launch per operation instead of a Python loop of small ops per leaf. Each transformation
flattens its trees once; that is most of the update's fixed cost (bench/optimizer.py).

Hyperparameters are numbers, or (K,) tensors with one value per variant, which update K models
stacked leaf by leaf (core/stack.py) at once, variant k as the numbers of variant k would
(core/optim/foreach.py says how a value meets a leaf). Transformations whose arithmetic spans
leaves (clipping's global norm) or reads shapes (the decay mask) work per variant when given (K,)
values.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim import foreach
from core.optim.foreach import Scalar
from core.tree import Tree, tree_flatten, tree_leaves, tree_unflatten

State = Any  # NamedTuples, tuples, dicts and lists of tensors and Python numbers


class GradientTransformation(NamedTuple):
    """`init(params) -> state`; `update(updates, state, params=None, *, donate=False) -> (updates, state)`."""

    init: Callable[[Tree], State]
    update: Callable[..., tuple[Tree, State]]


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply `transforms` in order, each to the updates the previous one returned. The state is the
    tuple of their states, in the same order."""

    def init(params: Tree) -> tuple[State, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(
        updates: Tree, state: tuple[State, ...], params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, tuple[State, ...]]:
        if len(state) != len(transforms):
            raise ValueError(f"chain: a state of {len(state)} parts for {len(transforms)} transformations")
        new_state = []
        for transform, inner in zip(transforms, state):
            updates, inner = transform.update(updates, inner, params, donate=donate)
            new_state.append(inner)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def scaled(leaves: list[Tensor], spec: Any, factor: Scalar, donate: bool) -> Tree:
    """The updates `leaves` (of structure `spec`) times `factor`: in place when donated, else as
    new tensors."""
    if donate:
        foreach.mul_(leaves, factor)
        return tree_unflatten(leaves, spec)
    return tree_unflatten(foreach.mul(leaves, factor), spec)


def hyperparameter(owner: str, name: str, value: float | Sequence[float] | Tensor, valid: Callable[[Any], Any], requirement: str) -> Scalar:
    """`value` as a transformation keeps it: a Python number as it is, a tensor or a list of
    numbers (one per variant) as float64, as Python's floats are. ValueError, naming `owner` and
    `name`, unless `valid` holds for every value."""
    if isinstance(value, (Tensor, list, tuple)):
        value = torch.as_tensor(value, dtype=torch.float64)
        if value.ndim > 1:
            raise ValueError(f"{owner}: {name} must be a number or one value per variant, got shape {tuple(value.shape)}")
        ok, shown = bool(valid(value).all()), value.tolist()
    else:
        ok, shown = bool(valid(value)), repr(value)
    if not ok:
        raise ValueError(f"{owner}: {name} must {requirement}, got {shown}")
    return value


def set_to_zero() -> GradientTransformation:
    """Zero updates, no state (optax's set_to_zero): freezes the leaves it is given, e.g. through
    `partition`, or leaves another process updates."""

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False) -> tuple[Tree, EmptyState]:
        leaves, spec = tree_flatten(updates)
        if donate:
            foreach.zero_(leaves)
            return updates, state
        return tree_unflatten([torch.zeros_like(leaf) for leaf in leaves], spec), state

    return GradientTransformation(init, update)


def apply_updates(params: Tree, updates: Tree, *, donate: bool = False) -> Tree:
    """`params + updates` (updates already carry the sign and the learning rate): new tensors, or,
    with `donate`, the parameters' own tensors updated in place."""
    leaves, spec = tree_flatten(params)
    if not leaves:
        return params
    updates = leaves_like(updates, spec, "apply_updates: updates")
    if donate:
        foreach.add_(leaves, updates)
        return params
    return tree_unflatten(foreach.add(leaves, updates), spec)


def global_norm(tree: Tree, *, per_variant: bool = False) -> Float[Tensor, ""] | Float[Tensor, " variants"]:
    """The L2 norm of all leaves together, as a tensor (reading it as a float would sync a GPU);
    with `per_variant`, of stacked leaves (K, *shape): each variant's norm over its slices, (K,)."""
    leaves = tree_leaves(tree)
    if per_variant:
        if not leaves:
            raise ValueError("global_norm: an empty tree has no variant axis")
        norms = [torch.linalg.vector_norm(leaf.reshape(leaf.shape[0], -1), dim=1) for leaf in leaves]
        return torch.linalg.vector_norm(torch.stack(norms), dim=0)
    if not leaves:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(foreach.norms(leaves)))


def leaves_like(tree: Tree, spec: Any, what: str) -> list[Any]:
    """The leaves of `tree`, which must have the structure `spec` (that of the updates)."""
    leaves, tree_spec = tree_flatten(tree)
    if tree_spec != spec:
        raise ValueError(f"{what} does not have the structure of the updates ({tree_spec} vs {spec})")
    return leaves
