"""Adam's rescaling (adam.py) for K stacked variants, each with its own b1, b2 and eps.

The state is adam.py's ScaleByAdamState with stacked moments: variant k's slice of it is exactly
the state `scale_by_adam(b1[k], b2[k], eps[k])` would hold after the same updates. The count is
one Python int for the group: the variants step together.
"""

import torch
from torch import Tensor

from core.optim.adam import ScaleByAdamState
from core.optim.base import GradientTransformation, leaves_like
from core.optim.stacked import VariantValues, per_variant
from core.tree import Tree, tree_flatten, tree_map, tree_unflatten


def stacked_scale_by_adam(b1: VariantValues, b2: VariantValues, eps: VariantValues) -> GradientTransformation:
    if not (bool(((0.0 <= b1) & (b1 < 1.0)).all()) and bool(((0.0 <= b2) & (b2 < 1.0)).all())):
        raise ValueError(f"stacked_scale_by_adam: b1 and b2 must lie in [0, 1), got {b1.tolist()}, {b2.tolist()}")
    if not bool((eps >= 0.0).all()):
        raise ValueError(f"stacked_scale_by_adam: eps must be non-negative, got {eps.tolist()}")

    def init(params: Tree) -> ScaleByAdamState:
        return ScaleByAdamState(0, tree_map(torch.zeros_like, params), tree_map(torch.zeros_like, params))

    def update(
        updates: Tree, state: ScaleByAdamState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, ScaleByAdamState]:
        grads, spec = tree_flatten(updates)
        mu = leaves_like(state.mu, spec, "stacked_scale_by_adam: state.mu")
        nu = leaves_like(state.nu, spec, "stacked_scale_by_adam: state.nu")
        count = state.count + 1
        if grads:
            mu, nu, grads = _adam_leaves(grads, mu, nu, count, b1, b2, eps, donate)
        return tree_unflatten(grads, spec), ScaleByAdamState(count, tree_unflatten(mu, spec), tree_unflatten(nu, spec))

    return GradientTransformation(init, update)


def _adam_leaves(
    grads: list[Tensor], mu: list[Tensor], nu: list[Tensor], count: int,
    b1: VariantValues, b2: VariantValues, eps: VariantValues, donate: bool,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """New (mu, nu, u), as adam.py's adam_leaves per variant; with `donate`, mu and nu are updated
    in place and u is written over the gradients.

    Everything happens in those three lists, with no new parameter-sized tensor: stacked leaves are
    K times a model's, and on the CPU a fresh buffer of that size costs page faults on every step
    (glibc returns large freed blocks to the system), which measured slower than the arithmetic."""
    if not donate:  # the same arithmetic on copies: nothing passed in is modified
        grads, mu, nu = ([leaf.clone() for leaf in leaves] for leaves in (grads, mu, nu))
    torch._foreach_lerp_(mu, grads, per_variant(1.0 - b1, grads))  # b1 m + (1 - b1) g
    torch._foreach_mul_(nu, per_variant(b2, grads))
    torch._foreach_mul_(grads, grads)  # the gradients are not needed past here but for g^2
    torch._foreach_addcmul_(nu, grads, per_variant(1.0 - b2, grads))  # b2 v + (1 - b2) g^2
    # m^ / (sqrt(v^) + eps) = m / (bias1 (sqrt(v) / sqrt(bias2) + eps)), as adam.py folds it.
    bias1, bias2 = 1.0 - b1**count, 1.0 - b2**count  # float64, as Python's floats
    denom = grads
    torch._foreach_copy_(denom, nu)
    torch._foreach_sqrt_(denom)
    torch._foreach_mul_(denom, per_variant(bias1 / bias2.sqrt(), grads))
    torch._foreach_add_(denom, per_variant(bias1 * eps, grads))
    torch._foreach_reciprocal_(denom)
    torch._foreach_mul_(denom, mu)  # u = m / denominator
    return mu, nu, denom
