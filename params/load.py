"""Loading a parameter pytree from a flat state dict, with errors that name the parameter."""

from torch import Tensor

from core.config import ModelConfig
from core.tree import Tree
from params.init import param_shapes
from params.tree import unflatten

# torch.compile wraps a module as `_orig_mod`, so its state dict names carry this prefix.
COMPILED_PREFIX = "_orig_mod."


def strip_compiled_prefix(flat: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name.replace(COMPILED_PREFIX, ""): value for name, value in flat.items()}


def load_params(flat: dict[str, Tensor], config: ModelConfig) -> Tree:
    """The pytree for `config` from dotted names; every name and shape is checked."""
    flat = strip_compiled_prefix(flat)
    expected = param_shapes(config)
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state dict does not match the model config: missing {missing}, unexpected {unexpected}")
    for name, (_, shape) in expected.items():
        if tuple(flat[name].shape) != shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(flat[name].shape)}, the config expects {shape}")
    return unflatten(flat)
