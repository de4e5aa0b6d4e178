"""Checkpoints: the handout's save/load for any module and optimizer, and the pipeline's state."""

import io

import numpy as np
import pytest
import torch

from pipelines.training import checkpoint
from pipelines.training.checkpoint import capture_rng, load_training_state, restore_rng, save_training_state
from tests.adapters import get_adamw_cls, run_load_checkpoint, run_save_checkpoint


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _trained(steps: int = 5) -> tuple[_Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = _Net()
    optimizer = get_adamw_cls()(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, 5)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def _fresh() -> tuple[_Net, torch.optim.Optimizer]:
    model = _Net()
    return model, get_adamw_cls()(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


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
    run_save_checkpoint(model=model, optimizer=optimizer, iteration=5, out=target)
    if to_file:
        target.seek(0)
    new_model, new_optimizer = _fresh()
    assert run_load_checkpoint(src=target, model=new_model, optimizer=new_optimizer) == 5
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
    run_save_checkpoint(compiled, optimizer, 3, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not any(name.startswith("_orig_mod.") for name in saved["model"])
    plain, new_optimizer = _fresh()
    run_load_checkpoint(tmp_path / "ckpt.pt", plain, new_optimizer)
    _assert_same_state(model.state_dict(), plain.state_dict())
    other, other_optimizer = _fresh()
    run_load_checkpoint(tmp_path / "ckpt.pt", torch.compile(other), other_optimizer)
    _assert_same_state(model.state_dict(), other.state_dict())


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    model, optimizer = _trained(1)
    path = tmp_path / "ckpt.pt"
    run_save_checkpoint(model, optimizer, 1, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"ckpt\.pt could not be read \(truncated or not a checkpoint\?\)"):
        run_load_checkpoint(path, *_fresh())
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not an lmkit checkpoint"):
        run_load_checkpoint(tmp_path / "other.pt", *_fresh())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        run_load_checkpoint(tmp_path / "missing.pt", *_fresh())


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained(1)
    path = tmp_path / "ckpt.pt"
    run_save_checkpoint(model, optimizer, 1, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_save_checkpoint(model, optimizer, 2, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_training_state_round_trips_params_optimizer_and_rng(tmp_path):
    generator = torch.Generator().manual_seed(7)
    params = {"w": torch.randn(3, 2), "layers": [{"g": torch.ones(2)}, {"g": torch.zeros(2)}]}
    opt_state = {"step": 4, "m": {"w": torch.ones(3, 2), "layers": [{"g": torch.ones(2)}] * 2},
                 "v": {"w": torch.ones(3, 2), "layers": [{"g": torch.ones(2)}] * 2}}
    torch.manual_seed(11)
    np.random.seed(12)
    rng = capture_rng(generator)
    expected = (torch.rand(3), np.random.rand(3), torch.rand(3, generator=generator))
    save_training_state(tmp_path / "state.pt", {
        "step": 4, "params": params, "opt_state": opt_state, "rng": rng, "elapsed": 1.5,
        "model_config": {"d_model": 2}, "train_config": {"lr": 0.1}, "tokenizer": "abc",
    })
    loaded = load_training_state(tmp_path / "state.pt")
    assert loaded["step"] == 4 and loaded["elapsed"] == 1.5 and loaded["tokenizer"] == "abc"
    assert loaded["model_config"] == {"d_model": 2} and loaded["train_config"] == {"lr": 0.1}
    assert torch.equal(loaded["params"]["w"], params["w"])
    assert isinstance(loaded["params"]["layers"], list) and len(loaded["params"]["layers"]) == 2
    assert loaded["opt_state"]["step"] == 4 and torch.equal(loaded["opt_state"]["v"]["w"], torch.ones(3, 2))

    other = torch.Generator().manual_seed(0)
    restore_rng(loaded["rng"], other)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert torch.equal(torch.rand(3, generator=other), expected[2])


def test_module_and_training_checkpoints_are_not_mixed_up(tmp_path):
    model, optimizer = _trained(1)
    run_save_checkpoint(model, optimizer, 1, tmp_path / "module.pt")
    with pytest.raises(ValueError, match="holds a 'module' checkpoint, expected 'training'"):
        load_training_state(tmp_path / "module.pt")
