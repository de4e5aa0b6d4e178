"""Decoupled weight decay (weight_decay.py) for K stacked variants, each with its own rate."""

import torch

from core.optim.base import EmptyState, GradientTransformation, leaves_like
from core.optim.stacked import VariantValues, per_variant
from core.optim.weight_decay import Mask, _mask_leaves
from core.stack import variant_view
from core.tree import Tree, tree_flatten, tree_unflatten


def stacked_add_decayed_weights(weight_decay: VariantValues, mask: Mask | None = None) -> GradientTransformation:
    """Add `weight_decay[k] * param` to variant k's update of every leaf where `mask` is True. The
    mask describes one model (a tree of one variant's shapes, or a function of one model's params,
    as `decay_matrices`): a 1-D gain is 2-D once stacked, and must still count as 1-D."""
    if not bool((weight_decay >= 0.0).all()):
        raise ValueError(f"stacked_add_decayed_weights: weight_decay must be non-negative, got {weight_decay.tolist()}")

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, EmptyState]:
        if params is None:
            raise ValueError("stacked_add_decayed_weights: update needs the params")
        leaves, spec = tree_flatten(updates)
        param_leaves = leaves_like(params, spec, "stacked_add_decayed_weights: params")
        if not leaves or not bool((weight_decay != 0.0).any()):
            return updates, state
        chosen = [i for i, keep in enumerate(_mask_leaves(mask, variant_view(params), spec)) if keep]
        if not chosen:
            return updates, state
        chosen_updates, chosen_params = [leaves[i] for i in chosen], [param_leaves[i] for i in chosen]
        rates = per_variant(weight_decay, chosen_params)
        if donate:
            torch._foreach_addcmul_(chosen_updates, chosen_params, rates)  # u + param * rate, in place
            return updates, state
        out = list(leaves)  # the leaves outside the mask pass through as they are (never modified)
        for i, leaf in zip(chosen, torch._foreach_addcmul(chosen_updates, chosen_params, rates), strict=True):
            out[i] = leaf
        return tree_unflatten(out, spec), state

    return GradientTransformation(init, update)
