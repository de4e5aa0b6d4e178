"""AdamW as a pure function over parameter pytrees, optax style.

    state = adamw_init(params)
    params, state = adamw_update(grads, state, params, hparams, lr)

Nothing is modified in place: the update returns new parameters and a new state. The arithmetic is
that of `torch.optim.AdamW` (decoupled weight decay applied before the Adam step, bias corrections
folded into the step size and the denominator), which differs from the handout's Algorithm 1 only
in the order of two O(lr^2) terms; matching torch lets us test against it to 1e-6 rather than 1e-4.

All leaves are updated together with `torch._foreach_*` ops: one kernel launch per operation over
the whole leaf list instead of a Python loop of tiny ops per parameter.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch

from core.tree import Tree, tree_flatten, tree_map, tree_unflatten


@dataclass(frozen=True)
class AdamWHParams:
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        beta1, beta2 = self.betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"AdamW betas must lie in [0, 1), got {self.betas!r}")
        if not self.eps >= 0.0:
            raise ValueError(f"AdamW eps must be non-negative, got {self.eps!r}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"AdamW weight_decay must be non-negative, got {self.weight_decay!r}")


def adamw_init(params: Tree) -> dict[str, Any]:
    """Zero moments shaped like `params` and a step count of 0 (the first update is step 1)."""
    return {
        "step": 0,
        "m": tree_map(torch.zeros_like, params),
        "v": tree_map(torch.zeros_like, params),
    }


def adamw_update(
    grads: Tree, state: dict[str, Any], params: Tree, hparams: AdamWHParams, lr: float
) -> tuple[Tree, dict[str, Any]]:
    """One AdamW step. `grads`, `params` and the moments in `state` share one tree structure."""
    param_leaves, spec = tree_flatten(params)
    grad_leaves = _leaves_like(grads, spec, "grads")
    m_leaves = _leaves_like(state["m"], spec, "state['m']")
    v_leaves = _leaves_like(state["v"], spec, "state['v']")

    step = state["step"] + 1
    beta1, beta2 = hparams.betas
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)

    # New tensors for the new state, then in-place foreach ops on them: on the CPU the out-of-place
    # foreach variants (_foreach_lerp, _foreach_mul) take several times as long as a copy plus the
    # in-place op.
    m_leaves, v_leaves, new_leaves = (_copies(leaves) for leaves in (m_leaves, v_leaves, param_leaves))

    # m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2
    torch._foreach_lerp_(m_leaves, grad_leaves, 1.0 - beta1)
    torch._foreach_mul_(v_leaves, beta2)
    torch._foreach_addcmul_(v_leaves, grad_leaves, grad_leaves, value=1.0 - beta2)

    # theta <- theta (1 - lr wd) - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    denom = _copies(v_leaves)
    torch._foreach_sqrt_(denom)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, hparams.eps)
    torch._foreach_mul_(new_leaves, 1.0 - lr * hparams.weight_decay)
    torch._foreach_addcdiv_(new_leaves, m_leaves, denom, value=-lr / bias_correction1)

    new_state = {
        "step": step,
        "m": tree_unflatten(m_leaves, spec),
        "v": tree_unflatten(v_leaves, spec),
    }
    return tree_unflatten(new_leaves, spec), new_state


def _copies(leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return [leaf.clone() for leaf in leaves]


def _leaves_like(tree: Tree, spec: Any, name: str) -> list[torch.Tensor]:
    leaves, tree_spec = tree_flatten(tree)
    if tree_spec != spec:
        raise ValueError(f"AdamW: {name} does not have the structure of params ({tree_spec} vs {spec})")
    return leaves
