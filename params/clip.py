"""In-place gradient clipping for nn.Module users, on core.optim's global norm and clip factor."""

from collections.abc import Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim import clip_scale, foreach, global_norm


@torch.no_grad()
def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, eps: float = 1e-6) -> Float[Tensor, ""]:
    """Scale the `.grad` of every parameter that has one so that their global norm is at most
    `max_norm` (as torch.nn.utils.clip_grad_norm_); returns the norm before clipping."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = global_norm(grads)
    foreach.mul_(grads, clip_scale(norm, max_norm, eps))
    return norm
