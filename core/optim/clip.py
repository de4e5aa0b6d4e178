"""Clipping updates by their global L2 norm (handout §4.5; torch's clip_grad_norm_)."""

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim.base import EmptyState, GradientTransformation, global_norm, scaled
from core.tree import Tree, tree_flatten


def clip_scale(norm: Float[Tensor, ""], max_norm: float, eps: float = 1e-6) -> Float[Tensor, ""]:
    """The factor clipping applies: max_norm / (norm + eps) where norm > max_norm, else 1.

    A tensor, not a Python branch on the norm: no host sync, and torch.compile sees one graph."""
    return torch.where(norm > max_norm, max_norm / (norm + eps), torch.ones_like(norm))


def clip_by_global_norm(max_norm: float, eps: float = 1e-6) -> GradientTransformation:
    """Scale all updates together so that their global norm is at most `max_norm`."""
    if not max_norm > 0.0:
        raise ValueError(f"clip_by_global_norm: max_norm must be positive, got {max_norm!r}")
    if not eps >= 0.0:
        raise ValueError(f"clip_by_global_norm: eps must be non-negative, got {eps!r}")

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, EmptyState]:
        leaves, spec = tree_flatten(updates)
        if not leaves:
            return updates, state
        return scaled(leaves, spec, clip_scale(global_norm(leaves), max_norm, eps), donate), state

    return GradientTransformation(init, update)
