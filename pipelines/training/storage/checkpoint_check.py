"""What a checkpoint must hold, checked before anything is built from it.

A file with the project's marker can still be damaged or edited by hand; unchecked, a missing
field or a parameter of the wrong shape surfaces as a KeyError or a shape error from deep inside
resume or generate. Each function here returns the first thing wrong, as a phrase that the
caller prefixes with the file ("checkpoint R/checkpoints/last.pt: field 'step' must be ..."), or
None. A training checkpoint is checked on saving too, so none that would fail here is written.
"""

import math
from typing import Any

import torch

from core.config import ModelConfig
from params.finite import non_finite_param
from params.load import load_params

_MAX_RNG = 2**32  # the data key is shifted left 32 bits into a 64-bit seed (pipelines/training/data/batches.py)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        return False


def _is_named_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _is_tensor_dict(value: Any) -> bool:
    return _is_named_dict(value) and all(isinstance(t, torch.Tensor) for t in value.values())


def _is_optimizer_state_dict(value: Any) -> bool:
    """The shape of torch.optim.Optimizer.state_dict(): {"state": {...}, "param_groups": [{"params": [...]}, ...]}."""
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict) or not isinstance(value.get("param_groups"), list):
        return False
    return all(isinstance(group, dict) and isinstance(group.get("params"), list) for group in value["param_groups"])


# Field, test, and what the test asks for, in the order they are reported.
TRAINING_FIELDS = (
    ("step", lambda v: _is_int(v) and v >= 0, "a non-negative int"),
    ("rng", lambda v: _is_int(v) and 0 <= v < _MAX_RNG, "an int in [0, 2**32)"),
    ("elapsed", _is_seconds, "a non-negative number of seconds"),
    ("model_config", lambda v: isinstance(v, dict), "a dict (the model config)"),
    ("tokenizer", lambda v: v is None or isinstance(v, str), "a tokenizer fingerprint or null"),
    ("params", _is_tensor_dict, "a dict of tensors by parameter name"),
    ("opt_state", _is_named_dict, "a dict of optimizer state by pytree path"),
)

MODULE_FIELDS = (
    ("model", _is_tensor_dict, "a dict of tensors by parameter name (a state dict)"),
    ("optimizer", _is_optimizer_state_dict, "an optimizer state dict (with 'state' and 'param_groups')"),
    ("iteration", lambda v: _is_int(v) and v >= 0, "a non-negative int"),
)


def field_problem(payload: dict[str, Any], fields: tuple) -> str | None:
    """The first of `fields` that is missing from `payload` or fails its test."""
    for name, test, wanted in fields:
        if name not in payload:
            return f"field {name!r} is missing"
        if not test(payload[name]):
            return f"field {name!r} must be {wanted}, got {describe(payload[name])}"
    return None


def training_problem(payload: dict[str, Any]) -> str | None:
    """The first thing wrong with a training payload: a field, the model config, or a parameter
    (name, shape, dtype, a NaN or infinity) against that config."""
    problem = field_problem(payload, TRAINING_FIELDS)
    if problem:
        return problem
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as error:  # TypeError: a required field is missing
        return f"field 'model_config' is not a valid model config: {error}"
    try:
        params = load_params(payload["params"], config)
    except ValueError as error:
        return str(error)
    bad = non_finite_param(params)
    return f"parameter {bad!r} holds NaN or infinite values" if bad else None


def describe(value: Any) -> str:
    """A short account of `value` for an error message."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:40]}..."
