"""Checkpoints: one file holding everything needed to resume, written atomically, read safely.

Two front doors over the same file handling:

- `save_checkpoint(model, optimizer, iteration, out)` / `load_checkpoint(src, model, optimizer)`:
  the handout's interface, for any `nn.Module` and `torch.optim.Optimizer` (their state dicts).
- `save_train_state(path, state, meta)` / `load_train_state(read_train_state(path), ...)`: the
  training pipeline's, for a `TrainState`: parameters by state-dict names, the optimizer state by
  pytree paths, the step, key and elapsed seconds, the configs and the tokenizer's fingerprint.

Files are read with `torch.load(weights_only=True)`, which unpickles only tensors and plain
containers, so opening a checkpoint from elsewhere cannot run code.
"""

import os
from pathlib import Path
from typing import IO, Any

import torch

from core.config import ModelConfig
from core.optim import GradientTransformation
from core.train_state import TrainState
from core.tree import tree_from_leaves_by_path, tree_leaves_by_path
from params.load import load_params, strip_compiled_prefix
from params.tree import flatten

FORMAT = "lmkit-checkpoint"
VERSION = 2  # 2: a TrainState (optimizer state by pytree paths, a data key instead of RNG states)

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


def save_train_state(path: str | os.PathLike, state: TrainState, meta: dict[str, Any]) -> None:
    """Write `state` atomically: parameters by their state-dict names, the optimizer state by its
    pytree paths, the step, key and elapsed seconds, and `meta` (plain values: the model and
    training configs, the tokenizer's fingerprint)."""
    opt_leaves = tree_leaves_by_path(state.opt_state)
    payload = {
        **meta,
        "kind": "training",
        "step": int(state.step),
        "rng": int(state.rng),
        "elapsed": float(state.elapsed),
        "params": _to_cpu(flatten(state.params)),
        "opt_state": _to_cpu(opt_leaves),
    }
    _write(payload, path)


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint's payload as saved (tensors on the CPU): for its metadata."""
    return _read(path, kind="training")


def load_train_state(
    payload: dict[str, Any], config: ModelConfig, optimizer: GradientTransformation, device: str | torch.device = "cpu"
) -> TrainState:
    """The TrainState of a payload from `read_train_state`, on `device`. Parameters are checked
    against `config` and the optimizer state against a fresh `optimizer.init`, name by name and
    shape by shape, so a checkpoint of another model or optimizer fails here, naming the field."""
    params = load_params({name: t.to(device) for name, t in payload["params"].items()}, config)
    fresh = optimizer.init(params)
    template = tree_leaves_by_path(fresh)
    saved = payload["opt_state"]
    if set(saved) != set(template):
        raise ValueError(f"the checkpoint's optimizer state does not match the optimizer: missing "
                         f"{sorted(set(template) - set(saved))}, unexpected {sorted(set(saved) - set(template))}")
    restored = {name: _restored(name, saved[name], leaf, device) for name, leaf in template.items()}
    return TrainState(params, tree_from_leaves_by_path(fresh, restored), payload["step"], payload["rng"], payload["elapsed"])


def _restored(name: str, saved: Any, fresh: Any, device: str | torch.device) -> Any:
    if isinstance(fresh, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != fresh.shape:
            raise ValueError(f"optimizer state {name}: the checkpoint holds {_describe(saved)}, the optimizer expects {_describe(fresh)}")
        return saved.to(device=device, dtype=fresh.dtype)
    if type(saved) is not type(fresh):
        raise ValueError(f"optimizer state {name}: the checkpoint holds {_describe(saved)}, the optimizer expects {_describe(fresh)}")
    return saved


def _describe(value: Any) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"{type(value).__name__} {value!r}"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile wraps the module; its state dict names gain `_orig_mod.`. Saving and loading the
    # inner module keeps checkpoints interchangeable between compiled and eager runs.
    return getattr(model, "_orig_mod", model)


def _to_cpu(flat: dict[str, Any]) -> dict[str, Any]:
    return {name: value.detach().cpu() if isinstance(value, torch.Tensor) else value for name, value in flat.items()}


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

