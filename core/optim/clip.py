"""Clipping updates by their global L2 norm (handout §4.5; torch's clip_grad_norm_)."""

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim.base import EmptyState, GradientTransformation, global_norm, hyperparameter, scaled
from core.optim.foreach import Scalar, is_per_variant, non_blocking
from core.tree import Tree, tree_flatten


def clip_scale(norm: Float[Tensor, "*variants"], max_norm: Scalar, eps: float = 1e-6) -> Float[Tensor, "*variants"]:
    """The factor clipping applies: max_norm / (norm + eps) where norm > max_norm, else 1; per
    variant when `norm` and `max_norm` are (K,).

    A tensor, not a Python branch on the norm: no host sync, and torch.compile sees one graph.
    Written as torch evaluates `number / tensor` (a reciprocal, then a product), so a (K,)
    max_norm gives each variant the factor its number would."""
    if isinstance(max_norm, Tensor):
        max_norm = max_norm.to(norm, non_blocking=non_blocking(norm.device))
    return torch.where(norm > max_norm, (norm + eps).reciprocal() * max_norm, torch.ones_like(norm))


def clip_by_global_norm(max_norm: Scalar, eps: float = 1e-6) -> GradientTransformation:
    """Scale all updates together so that their global norm is at most `max_norm`; with a (K,)
    max_norm, each stacked variant's updates by its own norm and limit."""
    max_norm = hyperparameter("clip_by_global_norm", "max_norm", max_norm, lambda v: v > 0.0, "be positive")
    if not eps >= 0.0:
        raise ValueError(f"clip_by_global_norm: eps must be non-negative, got {eps!r}")
    per_variant = is_per_variant(max_norm)

    def init(params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        updates: Tree, state: EmptyState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, EmptyState]:
        leaves, spec = tree_flatten(updates)
        if not leaves:
            return updates, state
        norm = global_norm(leaves, per_variant=per_variant)
        return scaled(leaves, spec, clip_scale(norm, max_norm, eps), donate), state

    return GradientTransformation(init, update)
