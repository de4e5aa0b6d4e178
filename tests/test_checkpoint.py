"""Checkpoints: the handout's save/load for any module and optimizer, and the pipeline's state;
writes that fail or are killed, and files that are damaged."""

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import ModelConfig
from core.errors import UsageError
from core.optim import adamw, chain, clip_by_global_norm, decay_matrices
from core.train_state import TrainState, init_train_state
from core.tree import tree_leaves_by_path
from params.init import init_params
from params.tree import flatten, unflatten
from params.optimizer import AdamW
from pipelines.files import atomic
from pipelines.training.storage import checkpoint
from pipelines.files.atomic import remove_stale_temporaries
from pipelines.training.storage.checkpoint import (
    CheckpointWriteError,
    load_checkpoint,
    load_train_state,
    read_train_state,
    save_checkpoint,
    save_train_state,
)
from tests.commands import ROOT


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _trained(steps: int = 5) -> tuple[_Net, torch.optim.Optimizer]:
    generator = torch.Generator().manual_seed(0)
    model = _Net()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.5, generator=generator)
    optimizer = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, 5, generator=generator)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def _fresh() -> tuple[_Net, torch.optim.Optimizer]:
    model = _Net()
    return model, AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("to_file", [False, True])
def test_save_then_load_restores_model_optimizer_and_iteration(tmp_path, to_file):
    model, optimizer = _trained()
    target = io.BytesIO() if to_file else tmp_path / "ckpt.pt"
    save_checkpoint(model=model, optimizer=optimizer, iteration=5, out=target)
    if to_file:
        target.seek(0)
    new_model, new_optimizer = _fresh()
    assert load_checkpoint(src=target, model=new_model, optimizer=new_optimizer) == 5
    _assert_same_state(model.state_dict(), new_model.state_dict())
    original, loaded = optimizer.state_dict(), new_optimizer.state_dict()
    assert original["param_groups"] == loaded["param_groups"]
    assert original["state"].keys() == loaded["state"].keys()
    for key in original["state"]:
        _assert_same_state(original["state"][key], loaded["state"][key])


def test_checkpoints_move_between_compiled_and_plain_modules(tmp_path):
    model, optimizer = _trained()
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it is called
    assert all(name.startswith("_orig_mod.") for name in compiled.state_dict())
    save_checkpoint(compiled, optimizer, 3, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not any(name.startswith("_orig_mod.") for name in saved["model"])
    plain, new_optimizer = _fresh()
    load_checkpoint(tmp_path / "ckpt.pt", plain, new_optimizer)
    _assert_same_state(model.state_dict(), plain.state_dict())
    other, other_optimizer = _fresh()
    load_checkpoint(tmp_path / "ckpt.pt", torch.compile(other), other_optimizer)
    _assert_same_state(model.state_dict(), other.state_dict())


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    model, optimizer = _trained(1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"ckpt\.pt could not be read \(truncated or not a checkpoint\?\)"):
        load_checkpoint(path, *_fresh())
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not an lmkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt", *_fresh())
    with pytest.raises(UsageError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", *_fresh())


def _failing_save(error: BaseException):
    def save(obj, f):
        f.write(b"partial")
        raise error

    return save


def _enforce_fail_after_enospc() -> RuntimeError:
    """What torch's zip writer raises on a full disk: its own RuntimeError, the OSError as context."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        except RuntimeError as error:
            return error


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (_enforce_fail_after_enospc(), "No space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\nframe #0"),
     r"\[enforce fail at inline_container.cc:672\] . unexpected pos 704 vs 598"),
])
def test_a_failed_write_keeps_the_previous_checkpoint_and_says_why_in_one_line(tmp_path, monkeypatch, error, reason):
    model, optimizer = _trained(1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.torch, "save", _failing_save(error))
    with pytest.raises(CheckpointWriteError, match=f"^could not write checkpoint {path}: {reason}$") as raised:
        save_checkpoint(model, optimizer, 2, path)
    assert "\n" not in str(raised.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_real_full_disk_is_one_line_and_the_old_train_state_still_loads(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    state = _stepped_state()
    save_train_state(path, state, META)
    before = path.read_bytes()
    # The save's temporary is a link to /dev/full, where every write fails with ENOSPC.
    full = tmp_path / ".state.pt.tmp1-00000000"
    full.symlink_to("/dev/full")
    monkeypatch.setattr(atomic, "temporary_path", lambda _: full)
    with pytest.raises(CheckpointWriteError, match=f"^could not write checkpoint {path}: No space left on device$"):
        save_train_state(path, state.replace(step=4), META)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert load_train_state(read_train_state(path), CONFIG, _optimizer()).step == 3


def test_an_io_error_at_fsync_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained(1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)

    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic.os, "fsync", eio)
    with pytest.raises(CheckpointWriteError, match="ckpt.pt: Input/output error$"):
        save_checkpoint(model, optimizer, 2, path)
    monkeypatch.undo()
    assert load_checkpoint(path, *_fresh()) == 1 and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


_KILLED_MID_SAVE = """
import sys, time, torch
from pipelines.training.storage import checkpoint
model = torch.nn.Linear(64, 64)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
checkpoint.save_checkpoint(model, optimizer, 1, sys.argv[1])
real_save = torch.save

def save_then_hang(obj, f):  # the whole payload goes into the temporary; the rename never comes
    real_save(obj, f)
    f.flush()
    print("written", flush=True)
    time.sleep(600)

checkpoint.torch.save = save_then_hang
checkpoint.save_checkpoint(model, optimizer, 2, sys.argv[1])
"""


def test_a_kill_mid_save_leaves_the_last_checkpoint_and_a_temporary_that_start_removes(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_MID_SAVE, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "written\n"
    finally:
        child.kill()  # SIGKILL, as kill -9: no handler runs, nothing is cleaned up
        child.wait()
        child.stdout.close()
    temporaries = list(path.parent.glob(".last.pt.tmp*"))
    assert len(temporaries) == 1 and atomic.is_temporary(temporaries[0].name, of="last.pt")
    assert temporaries[0].name.startswith(f".last.pt.tmp{child.pid}-")
    model = torch.nn.Linear(64, 64)
    assert load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1)) == 1
    assert remove_stale_temporaries(tmp_path) == temporaries
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


CONFIG = ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=2, num_heads=2)
META = {"model_config": CONFIG.to_dict(), "tokenizer": None}


def _optimizer():
    return chain(clip_by_global_norm(1.0), adamw(lambda step: 1e-3 * step, weight_decay=0.1, mask=decay_matrices))


def _stepped_state() -> TrainState:
    """A state some updates in: moments and counts that differ from a fresh init."""
    optimizer = _optimizer()
    state = init_train_state(init_params(CONFIG, torch.Generator().manual_seed(1)), optimizer, rng=7)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        grads = {name: torch.randn(t.shape, generator=generator) for name, t in flatten(state.params).items()}
        updates, opt_state = optimizer.update(unflatten(grads), state.opt_state, state.params)
        state = state.replace(opt_state=opt_state, step=state.step + 1)
    return state.replace(elapsed=1.5)


def test_a_train_state_round_trips_exactly(tmp_path):
    state = _stepped_state()
    save_train_state(tmp_path / "state.pt", state, {**META, "tokenizer": "abc"})
    payload = read_train_state(tmp_path / "state.pt")
    assert payload["tokenizer"] == "abc" and payload["model_config"] == CONFIG.to_dict()
    loaded = load_train_state(payload, CONFIG, _optimizer())
    assert (loaded.step, loaded.rng, loaded.elapsed) == (3, 7, 1.5)
    for name, tensor in flatten(state.params).items():
        assert torch.equal(flatten(loaded.params)[name], tensor)
    saved_leaves, loaded_leaves = tree_leaves_by_path(state.opt_state), tree_leaves_by_path(loaded.opt_state)
    assert saved_leaves.keys() == loaded_leaves.keys()
    for name, value in saved_leaves.items():
        assert torch.equal(loaded_leaves[name], value) if isinstance(value, torch.Tensor) else loaded_leaves[name] == value


def test_a_checkpoint_of_another_model_or_optimizer_is_refused_by_name(tmp_path):
    save_train_state(tmp_path / "state.pt", _stepped_state(), META)
    payload = read_train_state(tmp_path / "state.pt")
    wider = ModelConfig(vocab_size=16, context_length=8, d_model=16, num_layers=2, num_heads=2)
    with pytest.raises(ValueError, match="token_embeddings.weight"):
        load_train_state(payload, wider, _optimizer())
    with pytest.raises(ValueError, match="optimizer state does not match"):
        load_train_state(payload, CONFIG, adamw(1e-3))


def test_module_and_training_checkpoints_are_not_mixed_up(tmp_path):
    model, optimizer = _trained(1)
    save_checkpoint(model, optimizer, 1, tmp_path / "module.pt")
    with pytest.raises(ValueError, match="holds a 'module' checkpoint, expected 'training'"):
        read_train_state(tmp_path / "module.pt")


def _corrupted(path: Path, change) -> Path:
    """`path` rewritten with `change` applied to its payload, the project's marker kept."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def _set(field, value):
    return lambda payload: payload.__setitem__(field, value)


def _set_param(name, value):
    return lambda payload: payload["params"].__setitem__(name, value)


def _set_config(**changes):
    return lambda payload: payload["model_config"].update(changes)


HEAD = "lm_head.weight"


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.pop("opt_state"), "field 'opt_state' is missing"),
    (lambda p: p.pop("model_config"), "field 'model_config' is missing"),
    (lambda p: p.pop("tokenizer"), "field 'tokenizer' is missing"),
    (_set("step", "abc"), "field 'step' must be a non-negative int, got 'abc'"),
    (_set("step", -1), "field 'step' must be a non-negative int, got -1"),
    (_set("step", 2.5), "field 'step' must be a non-negative int, got 2.5"),
    (_set("rng", "seed"), r"field 'rng' must be an int in \[0, 2\*\*32\), got 'seed'"),
    (_set("rng", 2**40), r"field 'rng' must be an int in \[0, 2\*\*32\), got 1099511627776"),
    (_set("elapsed", "fast"), "field 'elapsed' must be a non-negative number of seconds, got 'fast'"),
    (_set("elapsed", float("nan")), "field 'elapsed' must be a non-negative number of seconds, got nan"),
    (_set("elapsed", 10**400), "field 'elapsed' must be a non-negative number of seconds, got int 1000000000"),
    (_set("tokenizer", 5), "field 'tokenizer' must be a tokenizer fingerprint or null, got 5"),
    (_set("params", [1, 2]), r"field 'params' must be a dict of tensors by parameter name, got \[1, 2\]"),
    (_set_param(HEAD, [0.0]), r"field 'params' must be a dict of tensors by parameter name, got dict {"),
    (_set("opt_state", "adam"), "field 'opt_state' must be a dict of optimizer state by pytree path, got 'adam'"),
    (_set("model_config", "small"), r"field 'model_config' must be a dict \(the model config\), got 'small'"),
    (lambda p: p["model_config"].pop("d_model"), "field 'model_config' is not a valid model config: .*'d_model'"),
    (_set_config(vocab_size=0), "field 'model_config' is not a valid model config: ModelConfig.vocab_size must be"),
    (lambda p: p["params"].pop(HEAD), r"state dict does not match the model config: missing \['lm_head.weight'\], unexpected \[\]"),
    (_set_param("extra.weight", torch.zeros(2)), r"state dict does not match the model config: missing \[\], unexpected \['extra.weight'\]"),
    (_set_param(HEAD, torch.zeros(3, 8)), r"parameter 'lm_head.weight' has shape \(3, 8\), the config expects \(16, 8\)"),
    (_set_param(HEAD, torch.zeros(16, 8, dtype=torch.float16)), "parameter 'lm_head.weight' has dtype torch.float16"),
    (_set_param(HEAD, torch.full((16, 8), float("inf"))), "parameter 'lm_head.weight' holds NaN or infinite values"),
])
def test_a_damaged_training_checkpoint_is_refused_naming_the_file_and_the_first_problem(tmp_path, change, problem):
    path = tmp_path / "last.pt"
    save_train_state(path, _stepped_state(), META)
    _corrupted(path, change)
    with pytest.raises(ValueError, match=f"^checkpoint {path}: {problem}") as raised:
        read_train_state(path)
    assert "\n" not in str(raised.value)


def _opt_leaf(payload, suffix):
    return next(name for name in payload["opt_state"] if name.endswith(suffix))


@pytest.mark.parametrize("change, problem", [
    (lambda p: p["opt_state"].pop(_opt_leaf(p, "['lm_head']['weight']")), r"the optimizer state does not match the optimizer: missing \["),
    (lambda p: p["opt_state"].__setitem__(_opt_leaf(p, "['lm_head']['weight']"), torch.zeros(2, 2)),
     r"optimizer state .*: the checkpoint holds a torch.float32 tensor of shape \(2, 2\), the optimizer expects a torch.float32 tensor of shape \(16, 8\)"),
    (lambda p: p["opt_state"].__setitem__(_opt_leaf(p, "['lm_head']['weight']"), torch.zeros(16, 8, dtype=torch.float64)),
     r"optimizer state .*\['lm_head'\]\['weight'\]: the checkpoint holds a torch.float64 tensor of shape \(16, 8\), "
     r"the optimizer expects a torch.float32 tensor"),
    (lambda p: p["opt_state"].__setitem__(_opt_leaf(p, ".count"), "three"), r"optimizer state .*\.count: the checkpoint holds 'three', the optimizer expects int$"),
])
def test_an_optimizer_state_that_does_not_fit_the_optimizer_is_refused_naming_the_leaf(tmp_path, change, problem):
    path = tmp_path / "last.pt"
    save_train_state(path, _stepped_state(), META)
    payload = read_train_state(_corrupted(path, change))  # the fields are sound; only the optimizer can tell
    with pytest.raises(ValueError, match=f"^checkpoint {path}: {problem}"):
        load_train_state(payload, CONFIG, _optimizer(), source=path)


def test_a_state_with_non_finite_parameters_is_never_written(tmp_path):
    path = tmp_path / "last.pt"
    state = _stepped_state()
    save_train_state(path, state, META)
    before = path.read_bytes()
    params = flatten(state.params)
    params["layers.1.ffn.w2.weight"] = params["layers.1.ffn.w2.weight"].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match=f"^refusing to write checkpoint {path}: parameter 'layers.1.ffn.w2.weight' holds NaN"):
        save_train_state(path, state.replace(params=unflatten(params)), META)
    with pytest.raises(ValueError, match="field 'model_config' is missing"):
        save_train_state(path, state, {"tokenizer": None})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.pop("optimizer"), "field 'optimizer' is missing"),
    (_set("iteration", "five"), "field 'iteration' must be a non-negative int, got 'five'"),
    (_set("optimizer", {"state": {}}), r"field 'optimizer' must be an optimizer state dict \(with 'state' and 'param_groups'\)"),
    (lambda p: p["model"].pop("fc2.bias"), r"the model's state dict does not match the model: missing \['fc2.bias'\], unexpected \[\]"),
    (lambda p: p["model"].__setitem__("fc2.bias", torch.zeros(7)), r"parameter 'fc2.bias' has shape \(7,\), the model expects \(2,\)"),
    (lambda p: p["optimizer"]["param_groups"][0]["params"].pop(), r"the optimizer's parameter groups hold \[3\] parameters, this optimizer's \[4\]"),
    (lambda p: p["optimizer"]["param_groups"][0].pop("lr"), r"the optimizer's parameter group 0 lacks \['lr'\]"),
])
def test_a_damaged_module_checkpoint_is_refused_and_changes_nothing(tmp_path, change, problem):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(*_trained(2), 2, path)
    _corrupted(path, change)
    model, optimizer = _fresh()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"^checkpoint {path}: {problem}") as raised:
        load_checkpoint(path, model, optimizer)
    assert "\n" not in str(raised.value)
    _assert_same_state(before, model.state_dict())


def test_an_error_torch_finds_while_loading_is_one_line_too(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(*_trained(1), 1, path)
    model, optimizer = _fresh()

    def refuse(state_dict):
        raise ValueError("loaded state dict is wrong\nin a way only torch knows")

    monkeypatch.setattr(optimizer, "load_state_dict", refuse)
    with pytest.raises(ValueError, match=f"^checkpoint {path}: loaded state dict is wrong$"):
        load_checkpoint(path, model, optimizer)
