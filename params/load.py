"""Loading a parameter pytree from a flat state dict, with errors that name the parameter."""

import torch
from torch import Tensor

from core.config import ModelConfig
from core.tree import Tree
from params.init import param_shapes
from params.tree import unflatten

# torch.compile wraps a module as `_orig_mod`, so its state dict names carry this prefix.
COMPILED_PREFIX = "_orig_mod."

# Parameters are kept in fp32 (autocast lowers only the computation), so every checkpoint holds them so.
PARAM_DTYPE = torch.float32


def strip_compiled_prefix(flat: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name.replace(COMPILED_PREFIX, ""): value for name, value in flat.items()}


def load_params(flat: dict[str, Tensor], config: ModelConfig) -> Tree:
    """The pytree for `config` from dotted names; every name, shape and dtype is checked."""
    flat = strip_compiled_prefix(flat)
    expected = param_shapes(config)
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state dict does not match the model config: missing {missing}, unexpected {unexpected}")
    for name, (_, shape) in expected.items():
        value = flat[name]
        if not isinstance(value, Tensor):
            raise ValueError(f"parameter {name!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(value.shape)}, the config expects {shape}")
        if value.dtype != PARAM_DTYPE:
            raise ValueError(f"parameter {name!r} has dtype {value.dtype}, expected {PARAM_DTYPE}")
    return unflatten(flat)
