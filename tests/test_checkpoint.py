"""Checkpoints: the handout's save/load for any module and optimizer, and the pipeline's state."""

import io

import pytest
import torch

from core.config import ModelConfig
from core.optim import adamw, chain, clip_by_global_norm, decay_matrices
from core.train_state import TrainState, init_train_state
from core.tree import tree_leaves_by_path
from params.init import init_params
from params.tree import flatten, unflatten
from params.optimizer import AdamW
from pipelines.training import checkpoint
from pipelines.training.checkpoint import load_checkpoint, load_train_state, read_train_state, save_checkpoint, save_train_state


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
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", *_fresh())


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained(1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(model, optimizer, 2, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


CONFIG = ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=2, num_heads=2)


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
    save_train_state(tmp_path / "state.pt", state, {"model_config": CONFIG.to_dict(), "tokenizer": "abc"})
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
    save_train_state(tmp_path / "state.pt", _stepped_state(), {})
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
