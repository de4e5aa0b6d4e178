"""Checkpoints: one file holding everything needed to resume, written atomically, read safely.

Two front doors over the same file handling:

- `save_checkpoint(model, optimizer, iteration, out)` / `load_checkpoint(src, model, optimizer)`:
  the handout's interface, for any `nn.Module` and `torch.optim.Optimizer` (their state dicts).
- `save_train_state(path, state, meta)` / `load_train_state(read_train_state(path), ...)`: the
  training pipeline's, for a `TrainState`: parameters by state-dict names, the optimizer state by
  pytree paths, the step, key and elapsed seconds, the configs and the tokenizer's fingerprint.

Files are written atomically (pipelines/files/atomic.py): a crash, a kill or a full disk
mid-save leaves the previous checkpoint intact, and a failed write is one CheckpointWriteError.
They are read with `torch.load(weights_only=True)`, which unpickles only tensors and plain
containers, so opening a checkpoint from elsewhere cannot run code; then every field is checked
(pipelines/training/storage/checkpoint_check.py) before anything is built from it. A training checkpoint
is checked the same way before it is written: none with NaN or infinite parameters ever is.
"""

import os
from pathlib import Path
from typing import IO, Any

import torch

from core.config import ModelConfig
from core.errors import UsageError, first_line
from core.optim import GradientTransformation
from core.train_state import TrainState
from core.tree import tree_from_leaves_by_path, tree_leaves_by_path
from params.load import load_params, strip_compiled_prefix
from params.tree import flatten
from pipelines.files.atomic import open_atomic
from pipelines.training.storage.checkpoint_check import MODULE_FIELDS, describe, field_problem, training_problem

FORMAT = "lmkit-checkpoint"
VERSION = 2  # 2: a TrainState (optimizer state by pytree paths, a data key instead of RNG states)

PathOrFile = str | os.PathLike | IO[bytes]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, I/O error); the previous one is intact."""


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: PathOrFile) -> None:
    """Model and optimizer state dicts and the iteration, to a path (atomically) or a binary file."""
    payload = {
        "kind": "module",
        "model": strip_compiled_prefix(_unwrap(model).state_dict()),
        "optimizer": optimizer.state_dict(),
        "iteration": int(iteration),
    }
    _write(payload, out)


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore `model` and `optimizer` in place from `src`; returns the saved iteration. The file
    is checked against both before either is touched, so a mismatch changes neither."""
    name = _name(src)
    payload = _read(src, kind="module")
    problem = field_problem(payload, MODULE_FIELDS) or _module_mismatch(payload, _unwrap(model), optimizer)
    if problem:
        raise UsageError(f"checkpoint {name}: {problem}")
    try:
        _unwrap(model).load_state_dict(strip_compiled_prefix(payload["model"]))
        optimizer.load_state_dict(payload["optimizer"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:  # a check torch adds that the ones above lack
        raise UsageError(f"checkpoint {name}: {first_line(error)}") from error
    return payload["iteration"]


def _module_mismatch(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first difference between the file's state dicts and those of `model` and `optimizer`."""
    saved, expected = strip_compiled_prefix(payload["model"]), strip_compiled_prefix(model.state_dict())
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        return f"the model's state dict does not match the model: missing {missing}, unexpected {unexpected}"
    for key, tensor in expected.items():
        if saved[key].shape != tensor.shape:
            return f"parameter {key!r} has shape {tuple(saved[key].shape)}, the model expects {tuple(tensor.shape)}"
    saved_groups = payload["optimizer"]["param_groups"]
    saved_sizes, sizes = [len(g["params"]) for g in saved_groups], [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != sizes:
        return f"the optimizer's parameter groups hold {saved_sizes} parameters, this optimizer's {sizes}"
    for index, (saved_group, group) in enumerate(zip(saved_groups, optimizer.param_groups)):
        # torch would load a group without its "lr" and fail only at the next step
        missing = sorted(set(group) - set(saved_group))
        if missing:
            return f"the optimizer's parameter group {index} lacks {missing}"
    return None


def save_train_state(path: str | os.PathLike, state: TrainState, meta: dict[str, Any]) -> None:
    """Write `state` atomically: parameters by their state-dict names, the optimizer state by its
    pytree paths, the step, key and elapsed seconds, and `meta`: plain values, at least
    "model_config" (ModelConfig.to_dict()) and "tokenizer" (its fingerprint, or None), and any
    others (the training config). A state that `read_train_state` would refuse, one with a NaN or
    infinite parameter above all, is refused here with a ValueError and nothing is written."""
    payload = {
        **meta,
        "kind": "training",
        "step": int(state.step),
        "rng": int(state.rng),
        "elapsed": float(state.elapsed),
        "params": _to_cpu(flatten(state.params)),
        "opt_state": _to_cpu(tree_leaves_by_path(state.opt_state)),
    }
    problem = training_problem(payload)
    if problem:
        raise ValueError(f"refusing to write checkpoint {path}: {problem}")
    _write(payload, path)


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint's payload as saved (tensors on the CPU), every field checked: the
    step, key and elapsed time, the model config, and each parameter's name, shape, dtype and
    finiteness against that config. The optimizer state is checked by `load_train_state`."""
    payload = _read(path, kind="training")
    problem = training_problem(payload)
    if problem:
        raise UsageError(f"checkpoint {path}: {problem}")
    return payload


def load_train_state(
    payload: dict[str, Any],
    config: ModelConfig,
    optimizer: GradientTransformation,
    device: str | torch.device = "cpu",
    *,
    source: str | os.PathLike | None = None,
) -> TrainState:
    """The TrainState of a payload from `read_train_state`, on `device`. Parameters are checked
    against `config` and the optimizer state against a fresh `optimizer.init`, leaf by leaf (type,
    shape, dtype), so a checkpoint of another model or optimizer fails here, naming the field;
    errors name `source`, the checkpoint's path, when it is given."""
    try:
        params = load_params({name: t.to(device) for name, t in payload["params"].items()}, config)
        fresh = optimizer.init(params)
        template = tree_leaves_by_path(fresh)
        restored = _restored_opt_state(payload["opt_state"], template, device)
    except ValueError as error:
        raise UsageError(f"checkpoint {source}: {error}" if source else str(error)) from error
    return TrainState(params, tree_from_leaves_by_path(fresh, restored), payload["step"], payload["rng"], payload["elapsed"])


def _restored_opt_state(saved: dict[str, Any], template: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    if set(saved) != set(template):
        raise UsageError(f"the optimizer state does not match the optimizer: missing "
                         f"{sorted(set(template) - set(saved))}, unexpected {sorted(set(saved) - set(template))}")
    return {name: _restored(name, saved[name], leaf, device) for name, leaf in template.items()}


def _restored(name: str, saved: Any, fresh: Any, device: str | torch.device) -> Any:
    if isinstance(fresh, torch.Tensor):
        same = isinstance(saved, torch.Tensor) and saved.shape == fresh.shape and saved.dtype == fresh.dtype
        if not same:
            raise UsageError(f"optimizer state {name}: the checkpoint holds {describe(saved)}, the optimizer expects {describe(fresh)}")
        return saved.to(device=device)
    if type(saved) is not type(fresh):
        raise UsageError(f"optimizer state {name}: the checkpoint holds {describe(saved)}, the optimizer expects {type(fresh).__name__}")
    return saved


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile wraps the module; its state dict names gain `_orig_mod.`. Saving and loading the
    # inner module keeps checkpoints interchangeable between compiled and eager runs.
    return getattr(model, "_orig_mod", model)


def _to_cpu(flat: dict[str, Any]) -> dict[str, Any]:
    return {name: value.detach().cpu() if isinstance(value, torch.Tensor) else value for name, value in flat.items()}


def _write(payload: dict[str, Any], out: PathOrFile) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        if isinstance(out, (str, os.PathLike)):
            with open_atomic(out) as f:
                torch.save(payload, f)
        else:
            torch.save(payload, out)
    # torch's zip writer reports a failed write (a full disk) as a RuntimeError
    # "[enforce fail at inline_container.cc...]"; the OSError behind it, if any, has the reason.
    except (OSError, RuntimeError) as error:
        raise CheckpointWriteError(f"could not write checkpoint {_name(out)}: {_reason(error)}") from error


def _reason(error: BaseException) -> str:
    """Why a write failed, in words: the strerror of the first OSError in the exception's chain
    (the close after a failed torch.save raises ENOSPC with the RuntimeError as its context)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return first_line(error)


def _name(src: PathOrFile) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<checkpoint stream>")


def _read(src: PathOrFile, kind: str) -> dict[str, Any]:
    name = _name(src)
    if isinstance(src, (str, os.PathLike)) and not Path(src).exists():
        raise UsageError(f"checkpoint {name} does not exist")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, disallowed pickle: all one story
        raise UsageError(f"checkpoint {name} could not be read (truncated or not a checkpoint?): {type(error).__name__}: {first_line(error)}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{name} is not an lmkit checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise UsageError(f"checkpoint {name} has format version {payload.get('version')}, this code reads {VERSION}")
    if payload.get("kind") != kind:
        raise UsageError(f"checkpoint {name} holds a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    return payload
