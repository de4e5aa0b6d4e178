"""The multi-tensor kernels the optimizer runs on, and how a hyperparameter meets a leaf.

Every transformation works on the whole leaf list at once with torch's `_foreach_*` ops: one
kernel launch per operation instead of a Python loop of small ops per leaf. Those ops are private
to torch, so every call goes through this module (as core/tree.py holds the pytree calls): a
change in torch is fixed here once.

A hyperparameter a transformation multiplies by (a learning rate, a beta, a decay rate, a clipping
factor) is a `Scalar`:

    a Python number        the same for every leaf, passed to torch as is (one kernel per op)
    a 0-d tensor           the same for every leaf, kept on the device (no host sync)
    a (K,) tensor          one value per variant, for stacked leaves of shape (K, *shape)
                           (K models trained at once, core/stack.py)

`broadcast` is the one place a (K,) tensor is fitted to the leaves: viewed as (K, 1, ..., 1)
against each leaf, in the leaf's dtype, so each variant's slice meets its own value. torch runs
such ops leaf by leaf (its slow path), still one Python call per operation for the whole tree.
Float64 values rounded to the leaf's dtype are what torch does with a Python float, so variant k
computes what the one-model transformation computes with variant k's numbers.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

Scalar = float | Tensor  # a number or 0-d tensor for every leaf, or a (K,) tensor: one per variant
Leaves = list[Tensor]


def is_per_variant(value: object) -> bool:
    """Whether `value` holds one value per variant (a (K,) tensor) rather than one for all."""
    return isinstance(value, Tensor) and value.ndim == 1


def non_blocking(device: torch.device) -> bool:
    """Whether a copy of a small pageable host tensor to `device` may be asynchronous: on CUDA (the
    copy returns once the source is staged, so a temporary source may go at once), not on MPS (its
    asynchronous copy can read a source already freed: pytorch/pytorch#189690)."""
    return device.type == "cuda"


def broadcast(value: Scalar, leaves: Sequence[Tensor]) -> Scalar | Leaves:
    """`value` as a foreach op takes it against `leaves`: a number or 0-d tensor as it is; a (K,)
    tensor as one (K, 1, ..., 1) view per leaf, on the leaf's device and in its dtype."""
    if not is_per_variant(value):
        return value
    converted: dict[tuple, Tensor] = {}  # one copy per device and dtype, not one per leaf
    out = []
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] != value.shape[0]:
            raise ValueError(f"a stacked leaf of shape {tuple(leaf.shape)} for {value.shape[0]} variants")
        key = (leaf.device, leaf.dtype)
        if key not in converted:
            converted[key] = value.to(device=leaf.device, dtype=leaf.dtype, non_blocking=non_blocking(leaf.device))
        out.append(converted[key].view(-1, *([1] * (leaf.ndim - 1))))
    return out


def mul(leaves: Leaves, factor: Scalar | Leaves) -> Leaves:
    return list(torch._foreach_mul(leaves, _fitted(factor, leaves)))


def mul_(leaves: Leaves, factor: Scalar | Leaves) -> None:
    torch._foreach_mul_(leaves, _fitted(factor, leaves))


def add(leaves: Leaves, other: Scalar | Leaves, scale: Scalar = 1) -> Leaves:
    """leaves + scale * other (a list of leaves, or a Scalar when scale is 1), as new tensors."""
    if is_per_variant(scale):
        return list(torch._foreach_addcmul(leaves, other, broadcast(scale, leaves)))
    if scale != 1:
        return list(torch._foreach_add(leaves, other, alpha=scale))
    return list(torch._foreach_add(leaves, _fitted(other, leaves)))


def add_(leaves: Leaves, other: Scalar | Leaves, scale: Scalar = 1) -> None:
    """leaves += scale * other (a list of leaves, or a Scalar when scale is 1), in place."""
    if is_per_variant(scale):
        torch._foreach_addcmul_(leaves, other, broadcast(scale, leaves))
    elif scale != 1:
        torch._foreach_add_(leaves, other, alpha=scale)
    else:
        torch._foreach_add_(leaves, _fitted(other, leaves))


def addcmul_(leaves: Leaves, first: Leaves, second: Leaves, scale: Scalar) -> Leaves | None:
    """leaves += scale * first * second, in place. Per variant, (scale * first) is made first, so
    the product rounds as torch's addcmul rounds it with a number; that temporary is returned,
    free for the caller to reuse (None with a number, which needs none)."""
    if not is_per_variant(scale):
        torch._foreach_addcmul_(leaves, first, second, value=scale)
        return None
    scaled = mul(first, scale)
    torch._foreach_addcmul_(leaves, scaled, second)
    return scaled


def lerp(leaves: Leaves, ends: Leaves, weight: Scalar) -> Leaves:
    return list(torch._foreach_lerp(leaves, ends, broadcast(weight, leaves)))


def lerp_(leaves: Leaves, ends: Leaves, weight: Scalar) -> None:
    torch._foreach_lerp_(leaves, ends, broadcast(weight, leaves))


def div(leaves: Leaves, divisor: Scalar | Leaves) -> Leaves:
    return list(torch._foreach_div(leaves, _fitted(divisor, leaves)))


def div_(leaves: Leaves, divisor: Scalar | Leaves) -> None:
    torch._foreach_div_(leaves, _fitted(divisor, leaves))


def sqrt(leaves: Leaves, out: Leaves | None = None) -> Leaves:
    """Each leaf's square root, as new tensors or written into `out`."""
    if out is None:
        return list(torch._foreach_sqrt(leaves))
    torch._foreach_copy_(out, leaves)
    torch._foreach_sqrt_(out)
    return out


def copy_(leaves: Leaves, sources: Leaves) -> None:
    torch._foreach_copy_(leaves, sources)


def zero_(leaves: Leaves) -> None:
    torch._foreach_zero_(leaves)


def norms(leaves: Leaves) -> list[Float[Tensor, ""]]:
    """Each leaf's L2 norm, as 0-d tensors."""
    return list(torch._foreach_norm(leaves))


def _fitted(value: Scalar | Leaves, leaves: Leaves) -> Scalar | Leaves:
    return value if isinstance(value, list) else broadcast(value, leaves)
