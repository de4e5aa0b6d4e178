"""Checkpoints: one file holding everything needed to resume, written atomically, read safely.

Two front doors over the same file handling:

- `save_checkpoint(model, optimizer, iteration, out)` / `load_checkpoint(src, model, optimizer)`:
  the handout's interface, for any `nn.Module` and `torch.optim.Optimizer` (their state dicts).
- `save_training_state(path, state)` / `load_training_state(path)`: the training pipeline's, for
  the functional step: a parameter pytree and AdamW state by dotted names, the step, the model and
  training configs, every RNG state and the tokenizer's fingerprint.

Files are read with `torch.load(weights_only=True)`, which unpickles only tensors and plain
containers, so opening a checkpoint from elsewhere cannot run code.
"""

import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from params.load import strip_compiled_prefix
from params.tree import flatten, unflatten

FORMAT = "lmkit-checkpoint"
VERSION = 1

PathOrFile = str | os.PathLike | IO[bytes]


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
    """Restore `model` and `optimizer` in place from `src`; returns the saved iteration."""
    payload = _read(src, kind="module")
    _unwrap(model).load_state_dict(strip_compiled_prefix(payload["model"]))
    optimizer.load_state_dict(payload["optimizer"])
    return payload["iteration"]


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write the training pipeline's state atomically. `state` holds `step` (int), `params` (a
    pytree), `opt_state` (AdamW's step and m, v pytrees) and any plain values besides (configs as
    dicts, `rng` from `capture_rng`, the tokenizer's fingerprint, elapsed seconds...)."""
    opt_state = state["opt_state"]
    payload = {
        **state,
        "kind": "training",
        "step": int(state["step"]),
        "params": _to_cpu(flatten(state["params"])),
        "opt_state": {
            "step": int(opt_state["step"]),
            "m": _to_cpu(flatten(opt_state["m"])),
            "v": _to_cpu(flatten(opt_state["v"])),
        },
    }
    _write(payload, path)


def load_training_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The inverse of `save_training_state`, with tensors moved to `device` and pytrees rebuilt."""
    payload = _read(path, kind="training")
    opt_state = payload["opt_state"]
    return {
        **payload,
        "params": _tree_on(payload["params"], device),
        "opt_state": {
            "step": opt_state["step"],
            "m": _tree_on(opt_state["m"], device),
            "v": _tree_on(opt_state["v"], device),
        },
    }


def capture_rng(data_generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training run draws from, as tensors (loadable with weights_only)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "data": data_generator.get_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    numpy = rng["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    data_generator.set_state(rng["data"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile wraps the module; its state dict names gain `_orig_mod.`. Saving and loading the
    # inner module keeps checkpoints interchangeable between compiled and eager runs.
    return getattr(model, "_orig_mod", model)


def _tree_on(flat: dict[str, torch.Tensor], device: str | torch.device) -> Any:
    return unflatten({name: tensor.to(device) for name, tensor in strip_compiled_prefix(flat).items()})


def _to_cpu(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in flat.items()}


def _write(payload: dict[str, Any], out: PathOrFile) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    if not isinstance(out, (str, os.PathLike)):
        torch.save(payload, out)
        return
    # Temp file, fsync, rename: a crash or a full disk mid-write leaves the previous checkpoint intact
    # instead of a truncated one under the real name.
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # makes the rename itself durable
    finally:
        os.close(directory)


def _read(src: PathOrFile, kind: str) -> dict[str, Any]:
    name = str(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<checkpoint stream>")
    if isinstance(src, (str, os.PathLike)) and not Path(src).exists():
        raise FileNotFoundError(f"checkpoint {name} does not exist")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, disallowed pickle: all one story
        raise ValueError(f"checkpoint {name} could not be read (truncated or not a checkpoint?): {type(error).__name__}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{name} is not an lmkit checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {name} has format version {payload.get('version')}, this code reads {VERSION}")
    if payload.get("kind") != kind:
        raise ValueError(f"checkpoint {name} holds a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    return payload

