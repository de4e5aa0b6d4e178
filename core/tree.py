"""Pytrees: nested dicts, lists, tuples and NamedTuples of tensors, mapped over as one value (as in JAX).

optree's C++ traversal does the work (torch's own C++ pytree is optree behind a private module):
each optimizer transformation flattens the parameter tree, so the traversal is part of every
update's fixed cost (`just bench optimizer` times the update).
Two settings keep the traversal that saved checkpoints and optimizer states were written with:
- a dict's leaves come in the order of its keys' insertion (optree sorts the keys by default):
  core/optim/partition.py names a leaf by its position in that order, in states and checkpoints;
- None is a leaf, as torch's pytrees treat it.
The settings belong to this project's own namespace, so no other user of optree sees them."""

from collections.abc import Callable
from typing import Any

import optree

Tree = Any  # a tensor, or a dict / list / tuple of trees

_NAMESPACE = "lmkit"
_OPTIONS = {"none_is_leaf": True, "namespace": _NAMESPACE}
# Entered once and never left (as torch does for its namespace): optree offers the mode as a
# context manager only, and entering and leaving it around each call would not be thread-safe.
# Held here, because leaving it is what garbage-collecting the context manager would do.
_INSERTION_ORDER = optree.dict_insertion_ordered(True, namespace=_NAMESPACE)
_INSERTION_ORDER.__enter__()


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    return optree.tree_map(fn, tree, *rest, **_OPTIONS)


def tree_leaves(tree: Tree) -> list[Any]:
    return optree.tree_leaves(tree, **_OPTIONS)


def tree_flatten(tree: Tree) -> tuple[list[Any], Any]:
    """The leaves and the structure (for tree_unflatten) in one traversal."""
    return optree.tree_flatten(tree, **_OPTIONS)


def tree_unflatten(leaves: list[Any], structure: Any) -> Tree:
    return optree.tree_unflatten(structure, leaves)


def tree_leaves_by_path(tree: Tree) -> dict[str, Any]:
    """The leaves keyed by their path (e.g. `[0].mu['layers'][0]['attn']`): names that say where
    a leaf sits, for files that outlive the process (checkpoints)."""
    accessors, leaves, _ = optree.tree_flatten_with_accessor(tree, **_OPTIONS)
    return {_path(accessor): leaf for accessor, leaf in zip(accessors, leaves, strict=True)}


def tree_from_leaves_by_path(template: Tree, leaves: dict[str, Any]) -> Tree:
    """`template` with each leaf replaced by `leaves[its path]`: the inverse of tree_leaves_by_path."""
    accessors, _, structure = optree.tree_flatten_with_accessor(template, **_OPTIONS)
    return optree.tree_unflatten(structure, [leaves[_path(accessor)] for accessor in accessors])


def _path(accessor: optree.PyTreeAccessor) -> str:
    """`[0].mu['layers']`: an index, a NamedTuple field, a dict key (its repr) per level, the
    format of torch's keystr that checkpoints were first written with."""
    return accessor.codify("")
