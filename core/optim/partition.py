"""Different transformations for different leaves (optax's multi_transform).

    optimizer = partition({"muon": muon(0.02), "adam": adamw(1e-3)}, muon_labels)

Every leaf carries a string label (a tree of labels shaped like the params, or a function that
makes one from the params); each transformation sees only the leaves with its label, as a list in
the order of the tree's leaves, and every leaf goes to exactly one transformation. The state is a
PartitionState holding each transformation's state over its list, so a checkpoint names a leaf by
label and position (`.inner_states['muon'][0].momentum[3]`) and `init(params)` rebuilds the same
structure.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from core.optim.base import GradientTransformation, State, leaves_like
from core.tree import Tree, tree_flatten, tree_map, tree_unflatten

Labels = Tree | Callable[[Tree], Tree]  # a tree of strings shaped like the params, or params -> one


class PartitionState(NamedTuple):
    inner_states: dict[str, State]  # label -> its transformation's state over its leaves


def partition(transforms: dict[str, GradientTransformation], labels: Labels) -> GradientTransformation:
    """Route each leaf to `transforms[its label]`. A labelling function is called on the params
    (in update: on the params when given, else on the updates, which have the same structure and
    shapes). A label without a transformation is an error; a transformation without leaves gets an
    empty list."""
    if not transforms:
        raise ValueError("partition: needs at least one transformation")
    transforms = dict(transforms)  # a caller editing their dict later cannot change the routing

    def init(params: Tree) -> PartitionState:
        leaves, spec = tree_flatten(params)
        groups = _groups(labels, params, spec, transforms)
        return PartitionState({name: t.init([leaves[i] for i in groups[name]]) for name, t in transforms.items()})

    def update(
        updates: Tree, state: PartitionState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, PartitionState]:
        if set(state.inner_states) != set(transforms):
            raise ValueError(f"partition: a state for labels {sorted(state.inner_states)}, transformations for {sorted(transforms)}")
        leaves, spec = tree_flatten(updates)
        groups = _groups(labels, updates if params is None else params, spec, transforms)
        param_leaves = None if params is None else leaves_like(params, spec, "partition: params")
        out = list(leaves)
        new_states = {}
        for name, transform in transforms.items():
            indices = groups[name]
            mine = None if param_leaves is None else [param_leaves[i] for i in indices]
            routed, new_states[name] = transform.update(
                [leaves[i] for i in indices], state.inner_states[name], mine, donate=donate
            )
            for i, leaf in zip(indices, routed, strict=True):
                out[i] = leaf
        return tree_unflatten(out, spec), PartitionState(new_states)

    return GradientTransformation(init, update)


def muon_labels(params: Tree) -> Tree:
    """This model's split for Muon: the 2-D matrices inside the blocks ("layers": attention
    q/k/v/output projections, feed-forward w1/w2/w3) -> "muon"; everything else -> "adam": the
    token embeddings and the LM head (a lookup table and a classifier, whose rows see very uneven
    gradients, which Muon would even out), RMSNorm gains and any other vector or scalar."""
    return {name: tree_map(lambda p, name=name: "muon" if name == "layers" and p.ndim == 2 else "adam", subtree)
            for name, subtree in params.items()}


def _groups(labels: Labels, tree: Tree, spec: Any, transforms: dict[str, GradientTransformation]) -> dict[str, list[int]]:
    """Label -> the indices of its leaves, for every label of `transforms`; errors name bad labels."""
    flat = leaves_like(labels(tree) if callable(labels) else labels, spec, "partition: labels")
    not_str = sorted({type(label).__name__ for label in flat if not isinstance(label, str)})
    if not_str:
        raise TypeError(f"partition: labels must be strings, got {not_str}")
    unknown = sorted(set(flat) - set(transforms))
    if unknown:
        raise ValueError(f"partition: no transformation for label(s) {unknown}; known: {sorted(transforms)}")
    groups: dict[str, list[int]] = {name: [] for name in transforms}
    for i, label in enumerate(flat):
        groups[label].append(i)
    return groups
