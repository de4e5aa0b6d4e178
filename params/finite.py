"""Whether a parameter pytree holds only finite numbers: a NaN or infinity in the weights makes
every output NaN, so such parameters are never checkpointed and never loaded."""

import torch

from core.tree import Tree
from params.tree import flatten


def non_finite_param(params: Tree) -> str | None:
    """The state-dict name of the first parameter holding a NaN or an infinity, or None."""
    flat = flatten(params)
    if not flat:
        return None
    # One flag per tensor, stacked, read back once: a single device sync, not one per parameter.
    finite = torch.stack([torch.isfinite(t).all() for t in flat.values()]).tolist()
    return next((name for name, ok in zip(flat, finite) if not ok), None)
