"""Pytrees: nested dicts and lists of tensors, mapped over as one value (as in JAX).

torch ships the machinery in a private module; this file is the one place that reaches into it."""

from collections.abc import Callable
from typing import Any

from torch.utils import _pytree

Tree = Any  # a tensor, or a dict / list / tuple of trees


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    return _pytree.tree_map(fn, tree, *rest)


def tree_leaves(tree: Tree) -> list[Any]:
    return _pytree.tree_leaves(tree)


def tree_flatten(tree: Tree) -> tuple[list[Any], Any]:
    """The leaves and the structure (for tree_unflatten) in one traversal."""
    return _pytree.tree_flatten(tree)


def tree_unflatten(leaves: list[Any], structure: Any) -> Tree:
    return _pytree.tree_unflatten(leaves, structure)


def tree_leaves_by_path(tree: Tree) -> tuple[dict[str, Any], Any]:
    """The leaves keyed by their path (e.g. `[0].mu['layers'][0]['attn']`), and the structure:
    names that say where a leaf sits, for files that outlive the process (checkpoints)."""
    with_paths, structure = _pytree.tree_flatten_with_path(tree)
    return {_pytree.keystr(path): leaf for path, leaf in with_paths}, structure
