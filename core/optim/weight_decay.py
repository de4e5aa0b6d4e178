"""Decoupled weight decay (Loshchilov & Hutter) as a transformation: u + weight_decay * param."""

from collections.abc import Callable

import torch

from core.optim.base import EmptyState, GradientTransformation, leaves_like
from core.tree import Tree, tree_flatten, tree_map, tree_unflatten

Mask = Tree | Callable[[Tree], Tree]  # a tree of bools shaped like the params, or params -> one


def add_decayed_weights(weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """Add `weight_decay * param` to the update of every leaf where `mask` is True (every leaf when
    mask is None). Needs `params` in `update`. Followed by `scale_by_learning_rate`, this is the
    decay of AdamW: theta <- theta - lr * (u + weight_decay * theta)."""
    if not weight_decay >= 0.0:
        raise ValueError(f"add_decayed_weights: weight_decay must be non-negative, got {weight_decay!r}")

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, EmptyState]:
        if params is None:
            raise ValueError("add_decayed_weights: update needs the params")
        leaves, spec = tree_flatten(updates)
        param_leaves = leaves_like(params, spec, "add_decayed_weights: params")
        if weight_decay == 0.0:
            return updates, state
        chosen = [i for i, keep in enumerate(_mask_leaves(mask, params, spec)) if keep]
        if not chosen:
            return updates, state
        chosen_updates, chosen_params = [leaves[i] for i in chosen], [param_leaves[i] for i in chosen]
        if donate:
            torch._foreach_add_(chosen_updates, chosen_params, alpha=weight_decay)
            return updates, state
        decayed = torch._foreach_add(chosen_updates, chosen_params, alpha=weight_decay)
        out = list(leaves)  # the leaves outside the mask pass through as they are (never modified)
        for i, leaf in zip(chosen, decayed, strict=True):
            out[i] = leaf
        return tree_unflatten(out, spec), state

    return GradientTransformation(init, update)


def decay_matrices(params: Tree) -> Tree:
    """The trainer's default mask: decay the leaves with two or more axes (weight matrices and
    embeddings), not the 1-D ones (RMSNorm gains), which decay would pull towards 0 rather than 1."""
    return tree_map(lambda p: p.ndim >= 2, params)


def _mask_leaves(mask: Mask | None, params: Tree, spec: object) -> list[bool]:
    if mask is None:
        return [True] * spec.num_leaves
    tree = mask(params) if callable(mask) else mask
    flags = leaves_like(tree, spec, "add_decayed_weights: mask")
    if not all(isinstance(flag, bool) for flag in flags):
        raise TypeError("add_decayed_weights: mask leaves must be Python bools")
    return flags
