"""Gradient clipping by global L2 norm."""

import torch
from jaxtyping import Float
from torch import Tensor

from core.tree import Tree, tree_flatten, tree_unflatten


def clip_by_global_norm(grads: Tree, max_norm: float, eps: float = 1e-6) -> tuple[Tree, Float[Tensor, ""]]:
    """Scale every gradient by max_norm / (norm + eps) when the global norm exceeds max_norm.

    Returns the clipped gradients and the norm before clipping (worth logging)."""
    leaves, spec = tree_flatten(grads)
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(leaves)))
    # A tensor factor, not a Python branch: no host sync, and torch.compile sees one graph.
    scale = torch.clamp(max_norm / (norm + eps), max=1.0)
    clipped = [leaf.clone() for leaf in leaves]  # copy + in-place foreach: the fast path on the CPU
    torch._foreach_mul_(clipped, scale)
    return tree_unflatten(clipped, spec), norm


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, eps: float = 1e-6) -> Float[Tensor, ""]:
    """In-place version for nn.Module users: clip the `.grad` of each parameter that has one."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    clipped, norm = clip_by_global_norm(grads, max_norm, eps)
    torch._foreach_copy_(grads, clipped)
    return norm
