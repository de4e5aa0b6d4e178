"""Decoupled weight decay (Loshchilov & Hutter) as a transformation: u + weight_decay * param."""

from collections.abc import Callable

from core.optim import foreach
from core.optim.base import EmptyState, GradientTransformation, hyperparameter, leaves_like
from core.optim.foreach import Scalar, is_per_variant
from core.stack import variant_view
from core.tree import Tree, tree_flatten, tree_map, tree_unflatten

Mask = Tree | Callable[[Tree], Tree]  # a tree of bools shaped like the params, or params -> one


def add_decayed_weights(weight_decay: Scalar = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """Add `weight_decay * param` to the update of every leaf where `mask` is True (every leaf when
    mask is None). Needs `params` in `update`. Followed by `scale_by_learning_rate`, this is the
    decay of AdamW: theta <- theta - lr * (u + weight_decay * theta).

    A (K,) weight_decay decays K stacked variants, each at its own rate; the mask then describes
    one model (a tree of one variant's leaves, or a function of one model's params such as
    `decay_matrices`): a 1-D gain is 2-D once stacked, and must still count as 1-D."""
    weight_decay = hyperparameter("add_decayed_weights", "weight_decay", weight_decay, lambda v: v >= 0.0, "be non-negative")
    per_variant = is_per_variant(weight_decay)
    decays = bool((weight_decay != 0.0).any() if per_variant else weight_decay != 0.0)  # constant: once, not per step

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, EmptyState]:
        if params is None:
            raise ValueError("add_decayed_weights: update needs the params")
        leaves, spec = tree_flatten(updates)
        param_leaves = leaves_like(params, spec, "add_decayed_weights: params")
        if not leaves or not decays:
            return updates, state
        one_model = variant_view(params) if per_variant else params
        chosen = [i for i, keep in enumerate(_mask_leaves(mask, one_model, spec)) if keep]
        if not chosen:
            return updates, state
        chosen_updates, chosen_params = [leaves[i] for i in chosen], [param_leaves[i] for i in chosen]
        if donate:
            foreach.add_(chosen_updates, chosen_params, weight_decay)
            return updates, state
        out = list(leaves)  # the leaves outside the mask pass through as they are (never modified)
        for i, leaf in zip(chosen, foreach.add(chosen_updates, chosen_params, weight_decay), strict=True):
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
