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

from core.optim import foreach
from core.optim.base import GradientTransformation, hyperparameter, leaves_like
from core.optim.foreach import Leaves, Scalar
from core.tree import Tree, tree_flatten, tree_map, tree_unflatten


class ScaleByAdamState(NamedTuple):
    count: int  # updates made so far; the next one is number count + 1
    mu: Tree  # first moments m, shaped like the params
    nu: Tree  # second moments v


def scale_by_adam(b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8) -> GradientTransformation:
    """Adam's direction; b1, b2 and eps are numbers, or (K,) tensors for K stacked variants
    (core/optim/foreach.py). The count is one Python int: stacked variants step together."""
    b1 = hyperparameter("scale_by_adam", "b1", b1, lambda v: (0.0 <= v) & (v < 1.0), "lie in [0, 1)")
    b2 = hyperparameter("scale_by_adam", "b2", b2, lambda v: (0.0 <= v) & (v < 1.0), "lie in [0, 1)")
    eps = hyperparameter("scale_by_adam", "eps", eps, lambda v: v >= 0.0, "be non-negative")

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
            mu, nu, grads = adam_leaves(grads, mu, nu, count, b1, b2, eps, donate)
        return tree_unflatten(grads, spec), ScaleByAdamState(count, tree_unflatten(mu, spec), tree_unflatten(nu, spec))

    return GradientTransformation(init, update)


def adam_leaves(
    grads: Leaves, mu: Leaves, nu: Leaves, count: int, b1: Scalar, b2: Scalar, eps: Scalar, donate: bool
) -> tuple[Leaves, Leaves, Leaves]:
    """New (mu, nu, u) for update number `count`, one foreach kernel per operation. Donated, mu
    and nu are updated in place and u is written over the gradients, with one temporary (the
    denominator), as torch.optim.AdamW(foreach=True) allocates."""
    if donate:
        foreach.lerp_(mu, grads, 1.0 - b1)  # b1 m + (1 - b1) g
        foreach.mul_(nu, b2)
    else:
        mu = foreach.lerp(mu, grads, 1.0 - b1)
        nu = foreach.mul(nu, b2)
    spare = foreach.addcmul_(nu, grads, grads, 1.0 - b2)  # nu is ours: donated, or just made
    # m^ / (sqrt(v^) + eps) = m / (bias1 (sqrt(v) / sqrt(bias2) + eps)): the corrections fold into
    # the denominator, so m^ and v^ never exist as tensors.
    bias1, bias2 = 1.0 - b1**count, 1.0 - b2**count
    denom = foreach.sqrt(nu, out=spare)  # per variant, into the temporary the line above made
    foreach.mul_(denom, bias1 / _sqrt(bias2))
    foreach.add_(denom, bias1 * eps)
    if not donate:
        return mu, nu, foreach.div(mu, denom)
    foreach.copy_(grads, mu)
    foreach.div_(grads, denom)
    return mu, nu, grads


def _sqrt(value: Scalar) -> Scalar:
    return value.sqrt() if isinstance(value, torch.Tensor) else math.sqrt(value)
