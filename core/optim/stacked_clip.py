"""Clipping K stacked variants, each by its own global norm and its own limit (clip.py, per variant)."""

import torch

from core.optim.base import EmptyState, GradientTransformation, scaled
from core.optim.stacked import VariantValues, per_variant, stacked_global_norm
from core.tree import Tree, tree_flatten


def stacked_clip_by_global_norm(max_norm: VariantValues, eps: float = 1e-6) -> GradientTransformation:
    """Scale each variant's updates together so that their global norm is at most its max_norm[k]."""
    if not bool((max_norm > 0.0).all()):
        raise ValueError(f"stacked_clip_by_global_norm: every max_norm must be positive, got {max_norm.tolist()}")

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, EmptyState]:
        leaves, spec = tree_flatten(updates)
        if not leaves:
            return updates, state
        norm = stacked_global_norm(leaves)
        scale = stacked_clip_scale(norm, max_norm.to(norm), eps)
        return scaled(leaves, spec, per_variant(scale, leaves), donate), state

    return GradientTransformation(init, update)


def stacked_clip_scale(norm: VariantValues, max_norm: VariantValues, eps: float = 1e-6) -> VariantValues:
    """clip_scale per variant: max_norm / (norm + eps) where norm > max_norm, else 1. Written as
    torch evaluates `max_norm / tensor` for a Python max_norm (a reciprocal, then a product)."""
    return torch.where(norm > max_norm, (norm + eps).reciprocal() * max_norm, torch.ones_like(norm))
