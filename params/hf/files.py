"""Reading a `transformers` Llama folder: config.json and the weights, safetensors or PyTorch's
pickle format, whole or sharded (with its *.index.json). Every file is opened safely:
safetensors holds raw tensors only, and a .bin is unpickled with weights_only=True."""

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from core.errors import UsageError, first_line

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"
EXTRA = 'pip install -e ".[hf]"'


def require(module: str) -> ModuleType:
    """The optional module `module`, or a one-line UsageError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UsageError(f"{package} is not installed; install the hf extra: {EXTRA}") from None


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} not found: not a transformers model folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path} could not be read: {error}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path} is not a JSON object")
    return values


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the folder's weights, by name, on the CPU."""
    for name, read in ((SAFETENSORS_FILE, _read_safetensors), (PICKLE_FILE, _read_pickle)):
        if (directory / name).is_file():
            return read(directory / name)
        index = directory / (name + INDEX_SUFFIX)
        if index.is_file():
            state: dict[str, Tensor] = {}
            for shard in _shards(index):
                part = read(directory / shard)
                repeated = sorted(set(part) & set(state))
                if repeated:
                    raise UsageError(f"{directory / shard}: {repeated[0]} is also in another shard")
                state.update(part)
            return state
    raise UsageError(f"{directory} holds no {SAFETENSORS_FILE} or {PICKLE_FILE} (nor a sharded index of either)")


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{index} could not be read as a shard index: {error}") from None
    # Shards are files beside the index; a name with a path could point anywhere.
    outside = [shard for shard in shards if not isinstance(shard, str) or Path(shard).name != shard]
    if outside:
        raise UsageError(f"{index} names a shard outside its folder: {outside[0]!r}")
    return shards


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    safetensors_torch = require("safetensors.torch")
    try:
        return safetensors_torch.load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError: a truncated or foreign file, one story
        raise UsageError(f"{path} could not be read as safetensors: {first_line(error)}") from None


def _read_pickle(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, disallowed pickle: all one story
        raise UsageError(f"{path} could not be read (weights_only=True): {first_line(error)}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UsageError(f"{path} does not hold a state dict (names to tensors)")
    return state
