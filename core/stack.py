"""K models as one: pytrees stacked leaf by leaf, and one value per model.

    stacked = stack_trees([params_0, ..., params_{K-1}])   # each leaf (K, *shape)
    params_k = unstack_tree(stacked, k)                    # variant k's own copy
    lrs = variant_values([3e-3, 1e-2, ...])                # (K,) float64: one per variant

This is how a vectorised sweep holds K models (or K optimizer states) at once: `torch.func.vmap`
runs them as one batched computation (core/train_step.py, `variants=True`), and the optimizer's
transformations take (K,) hyperparameters (core/optim/foreach.py). Leaves that are not tensors
(the Python-int step counts of optimizer states) are shared: every tree must hold the same value
there.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from core.tree import Tree, tree_flatten, tree_map, tree_unflatten


def stack_trees(trees: Sequence[Tree]) -> Tree:
    """One tree whose tensor leaves are those of `trees` stacked on a new axis 0."""
    if not trees:
        raise ValueError("stack_trees: needs at least one tree")
    flat = [tree_flatten(tree) for tree in trees]
    spec = flat[0][1]
    for index, (_, other) in enumerate(flat[1:], 1):
        if other != spec:
            raise ValueError(f"stack_trees: tree {index} does not have the structure of tree 0 ({other} vs {spec})")
    stacked = []
    for position, leaves in enumerate(zip(*(leaves for leaves, _ in flat))):
        if isinstance(leaves[0], torch.Tensor):
            stacked.append(torch.stack(leaves))
        elif all(leaf == leaves[0] for leaf in leaves):
            stacked.append(leaves[0])
        else:
            raise ValueError(f"stack_trees: leaf {position} is not a tensor and differs between trees: {list(leaves)}")
    return tree_unflatten(stacked, spec)


def unstack_tree(tree: Tree, index: int) -> Tree:
    """Variant `index` of a stacked tree, as tensors of its own (a clone, not a view: saved with
    torch.save, a view would carry the whole stack's storage)."""
    return tree_map(lambda leaf: leaf[index].clone() if isinstance(leaf, torch.Tensor) else leaf, tree)


def variant_view(tree: Tree, index: int = 0) -> Tree:
    """Variant `index` as views into the stack (no copy): for reading shapes, or a mask function
    written for one model's leaves."""
    return tree_map(lambda leaf: leaf[index] if isinstance(leaf, torch.Tensor) else leaf, tree)


def variant_values(values: float | Sequence[float] | Tensor, variants: int | None = None) -> Float[Tensor, " variants"]:
    """(K,) float64 values from a tensor, a list of numbers, or one number repeated `variants`
    times: a hyperparameter with one value per variant. Float64, as Python's floats are, so each
    variant's value rounds into a leaf's dtype as its number would."""
    if isinstance(values, (int, float)):
        if variants is None:
            raise ValueError("variant_values: one value needs the number of variants")
        values = [float(values)] * variants
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.ndim != 1:
        raise ValueError(f"variant_values: expected one value per variant, got shape {tuple(tensor.shape)}")
    return tensor
