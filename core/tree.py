"""Pytrees: nested dicts and lists of tensors, mapped over as one value (as in JAX).

torch ships the machinery in private modules; this file is the one place that reaches into them.
Flattening runs on torch's C++ pytree (optree underneath): each optimizer transformation flattens
the parameter tree, and optree takes the update of the cpu-small model from 9.3 to 6.7 ms
(bench/optimizer.py). Key paths, which the C++ version lacks, come from torch's Python pytree;
only checkpoints need them."""

from collections.abc import Callable
from typing import Any

from torch.utils import _cxx_pytree as _fast, _pytree as _python

Tree = Any  # a tensor, or a dict / list / tuple of trees


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    return _fast.tree_map(fn, tree, *rest)


def tree_leaves(tree: Tree) -> list[Any]:
    return _fast.tree_leaves(tree)


def tree_flatten(tree: Tree) -> tuple[list[Any], Any]:
    """The leaves and the structure (for tree_unflatten) in one traversal."""
    return _fast.tree_flatten(tree)


def tree_unflatten(leaves: list[Any], structure: Any) -> Tree:
    return _fast.tree_unflatten(leaves, structure)


def tree_leaves_by_path(tree: Tree) -> dict[str, Any]:
    """The leaves keyed by their path (e.g. `[0].mu['layers'][0]['attn']`): names that say where
    a leaf sits, for files that outlive the process (checkpoints)."""
    with_paths, _ = _python.tree_flatten_with_path(tree)
    return {_python.keystr(path): leaf for path, leaf in with_paths}


def tree_from_leaves_by_path(template: Tree, leaves: dict[str, Any]) -> Tree:
    """`template` with each leaf replaced by `leaves[its path]`: the inverse of tree_leaves_by_path."""
    with_paths, structure = _python.tree_flatten_with_path(template)
    return _python.tree_unflatten([leaves[_python.keystr(path)] for path, _ in with_paths], structure)
