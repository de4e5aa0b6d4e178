"""What the stacked transformations share: per-variant values broadcast over stacked leaves.

A stacked transformation (core/optim/stacked_*.py) updates K models at once: every leaf is
(K, *shape), one slice per variant (core/stack.py), and each hyperparameter is a (K,) tensor, one
value per variant. `per_variant` views such a (K,) tensor as (K, 1, ..., 1) for each leaf, so a
foreach op multiplies each variant's slice by its own value. The foreach ops take those views
leaf for leaf (their slow path: one broadcasting op per leaf), which is still one Python call per
operation for the whole tree, as in the sequential transformations.

Each stacked transformation computes, for every variant k, what its sequential twin (same file
name without `stacked_`) computes on variant k alone with variant k's hyperparameters.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from core.tree import Tree, tree_leaves

VariantValues = Float[Tensor, " variants"]  # one value per variant


def as_variant_values(values: float | Sequence[float] | Tensor, variants: int | None = None) -> Tensor:
    """(K,) float64 values from a tensor, a list of floats, or one float repeated `variants` times.
    Float64, as Python floats are: the sequential transformations compute their factors (1 - b1,
    bias corrections, the learning rate) in Python floats, which torch rounds to the leaf's dtype
    in the kernel; `per_variant` rounds the same float64 factors the same way."""
    if isinstance(values, (int, float)):
        if variants is None:
            raise ValueError("as_variant_values: one value needs the number of variants")
        values = [float(values)] * variants
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.ndim != 1:
        raise ValueError(f"as_variant_values: expected one value per variant, got shape {tuple(tensor.shape)}")
    return tensor


def per_variant(values: VariantValues, leaves: Sequence[Tensor]) -> list[Tensor]:
    """`values` viewed as (K, 1, ..., 1) against each leaf, on the leaf's device and dtype."""
    converted: dict[tuple, Tensor] = {}  # one copy per device and dtype, not one per leaf
    out = []
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] != values.shape[0]:
            raise ValueError(f"a stacked leaf of shape {tuple(leaf.shape)} for {values.shape[0]} variants")
        key = (leaf.device, leaf.dtype)
        if key not in converted:
            converted[key] = values.to(device=leaf.device, dtype=leaf.dtype)
        out.append(converted[key].view(-1, *([1] * (leaf.ndim - 1))))
    return out


def stacked_global_norm(tree: Tree) -> VariantValues:
    """Each variant's global L2 norm over all its leaves: (K,), as `global_norm` per variant."""
    leaves = tree_leaves(tree)
    if not leaves:
        raise ValueError("stacked_global_norm: an empty tree has no variant axis")
    norms = [torch.linalg.vector_norm(leaf.reshape(leaf.shape[0], -1), dim=1) for leaf in leaves]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


def stacked_all_finite(tree: Tree) -> Bool[Tensor, " variants"]:
    """Whether every element of each variant's leaves is finite: (K,)."""
    finite = [torch.isfinite(leaf).reshape(leaf.shape[0], -1).all(dim=1) for leaf in tree_leaves(tree)]
    return torch.stack(finite).all(dim=0)
