"""Adam's rescaling of the updates (Kingma & Ba), optax's `scale_by_adam`.

With g the incoming update (the gradient) and t the number of this update (1, 2, ...):

    m_t = b1 m_{t-1} + (1 - b1) g          v_t = b2 v_{t-1} + (1 - b2) g^2
    m^_t = m_t / (1 - b1^t)                v^_t = v_t / (1 - b2^t)
    u_t = m^_t / (sqrt(v^_t) + eps)

eps is added after the bias correction, as optax and torch.optim.Adam(W) do; see core/optim/adamw.py
for how this relates to the handout's Algorithm 1. The output has no sign and no learning rate:
`scale_by_learning_rate` supplies both.
"""

import math
from typing import NamedTuple

import torch

from core.optim.base import GradientTransformation, leaves_like
from core.tree import Tree, tree_flatten, tree_map, tree_unflatten


class ScaleByAdamState(NamedTuple):
    count: int  # updates made so far; the next one is number count + 1
    mu: Tree  # first moments m, shaped like the params
    nu: Tree  # second moments v


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"scale_by_adam: b1 and b2 must lie in [0, 1), got {b1!r}, {b2!r}")
    if not eps >= 0.0:
        raise ValueError(f"scale_by_adam: eps must be non-negative, got {eps!r}")

    def init(params: Tree) -> ScaleByAdamState:
        return ScaleByAdamState(0, tree_map(torch.zeros_like, params), tree_map(torch.zeros_like, params))

    def update(
        updates: Tree, state: ScaleByAdamState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, ScaleByAdamState]:
        grads, spec = tree_flatten(updates)
        mu = leaves_like(state.mu, spec, "scale_by_adam: state.mu")
        nu = leaves_like(state.nu, spec, "scale_by_adam: state.nu")
        count = state.count + 1
        if grads:
            adam = adam_leaves_ if donate else adam_leaves
            mu, nu, grads = adam(grads, mu, nu, count, b1, b2, eps)
        return tree_unflatten(grads, spec), ScaleByAdamState(count, tree_unflatten(mu, spec), tree_unflatten(nu, spec))

    return GradientTransformation(init, update)


def adam_leaves(
    grads: list[torch.Tensor], mu: list[torch.Tensor], nu: list[torch.Tensor], count: int, b1: float, b2: float, eps: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """New (mu, nu, u) for update number `count`, one foreach kernel per operation."""
    mu = list(torch._foreach_lerp(mu, grads, 1.0 - b1))  # b1 m + (1 - b1) g
    nu = list(torch._foreach_mul(nu, b2))
    torch._foreach_addcmul_(nu, grads, grads, value=1.0 - b2)  # nu is ours until returned
    return mu, nu, list(torch._foreach_div(mu, _denominator(nu, count, b1, b2, eps)))


def adam_leaves_(
    grads: list[torch.Tensor], mu: list[torch.Tensor], nu: list[torch.Tensor], count: int, b1: float, b2: float, eps: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """`adam_leaves` on donated inputs: mu and nu updated in place, u written over the gradients."""
    torch._foreach_lerp_(mu, grads, 1.0 - b1)
    torch._foreach_mul_(nu, b2)
    torch._foreach_addcmul_(nu, grads, grads, value=1.0 - b2)
    denom = _denominator(nu, count, b1, b2, eps)  # the one temporary
    torch._foreach_copy_(grads, mu)
    torch._foreach_div_(grads, denom)
    return mu, nu, grads


def _denominator(nu: list[torch.Tensor], count: int, b1: float, b2: float, eps: float) -> list[torch.Tensor]:
    # m^ / (sqrt(v^) + eps) = m / (bias1 (sqrt(v) / sqrt(bias2) + eps)): the corrections fold into
    # the denominator, so m^ and v^ never exist as tensors.
    bias1, bias2 = 1.0 - b1**count, 1.0 - b2**count
    denom = list(torch._foreach_sqrt(nu))
    torch._foreach_mul_(denom, bias1 / math.sqrt(bias2))
    torch._foreach_add_(denom, bias1 * eps)
    return denom
