"""AdamW: the pure update and its Optimizer shell against torch.optim.AdamW and the snapshot."""

import io

import numpy as np
import pytest
import torch

from conftest import shared_path
from core.optim import AdamWHParams, adamw_init, adamw_update
from core.tree import tree_leaves
from tests.adapters import get_adamw_cls


def _train_linear(optimizer_cls, steps: int = 1000) -> torch.Tensor:
    """The snapshot's recipe (shared/README.md): nn.Linear(3, 2) regressing [x0 + x1, -x2]."""
    torch.manual_seed(42)
    model = torch.nn.Linear(3, 2, bias=False)
    optimizer = optimizer_cls(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.rand(model.in_features)
        target = torch.tensor([x[0] + x[1], -x[2]])
        loss = ((target - model(x)) ** 2).sum()
        loss.backward()
        optimizer.step()
    return model.weight.detach()


def test_adamw_matches_snapshot():
    expected = np.load(shared_path("fixtures/snapshots/adamw.npz"))["array"]
    np.testing.assert_allclose(_train_linear(get_adamw_cls()).numpy(), expected, atol=1e-4)


def test_adamw_matches_torch_adamw_after_1000_steps():
    ours, theirs = _train_linear(get_adamw_cls()), _train_linear(torch.optim.AdamW)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("betas, eps, weight_decay, lr", [((0.9, 0.95), 1e-8, 0.1, 3e-3), ((0.0, 0.5), 1e-3, 0.0, 1e-2)])
def test_pure_update_matches_torch_over_a_pytree(betas, eps, weight_decay, lr):
    generator = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=generator), "layers": [{"g": torch.randn(5, generator=generator)}]}
    reference = [p.clone().requires_grad_() for p in tree_leaves(params)]
    torch_opt = torch.optim.AdamW(reference, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    hparams = AdamWHParams(betas, eps, weight_decay)
    state = adamw_init(params)
    for _ in range(50):
        grads = {"w": torch.randn(4, 3, generator=generator), "layers": [{"g": torch.randn(5, generator=generator)}]}
        for p, g in zip(reference, tree_leaves(grads)):
            p.grad = g.clone()
        torch_opt.step()
        params, state = adamw_update(grads, state, params, hparams, lr)
    assert state["step"] == 50
    for ours, theirs in zip(tree_leaves(params), reference):
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-6)


def test_pure_update_leaves_its_inputs_untouched():
    params = {"w": torch.ones(3)}
    grads = {"w": torch.full((3,), 0.5)}
    state = adamw_init(params)
    new_params, new_state = adamw_update(grads, state, params, AdamWHParams(weight_decay=0.1), lr=0.1)
    assert torch.equal(params["w"], torch.ones(3)) and torch.equal(state["m"]["w"], torch.zeros(3))
    assert state["step"] == 0 and new_state["step"] == 1
    assert not torch.equal(new_params["w"], params["w"])


def test_pure_update_rejects_mismatched_trees():
    params = {"w": torch.ones(3)}
    with pytest.raises(ValueError, match="grads does not have the structure of params"):
        adamw_update({"v": torch.ones(3)}, adamw_init(params), params, AdamWHParams(), lr=0.1)


@pytest.mark.parametrize("bad", [dict(betas=(1.0, 0.9)), dict(eps=-1.0), dict(weight_decay=-0.1)])
def test_hparams_are_validated(bad):
    with pytest.raises(ValueError, match="AdamW"):
        AdamWHParams(**bad)


def test_optimizer_state_dict_round_trips_and_resumes_identically():
    AdamW = get_adamw_cls()

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        return model, AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)

    def step(model, optimizer, i):
        optimizer.zero_grad()
        x = torch.linspace(-1, 1, 4 * 8).reshape(8, 4) * (i + 1)
        model(x).pow(2).mean().backward()
        optimizer.step()

    model, optimizer = make()
    for i in range(3):
        step(model, optimizer, i)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    for i in range(3, 6):
        step(model, optimizer, i)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_optimizer = make()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    assert resumed_optimizer.state_dict()["param_groups"] == saved["optimizer"]["param_groups"]
    for i in range(3, 6):
        step(resumed, resumed_optimizer, i)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_optimizer_skips_parameters_without_gradients_and_follows_lr_changes():
    AdamW = get_adamw_cls()
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    reference = torch.nn.Parameter(torch.ones(2))
    ours = AdamW([used, unused], lr=0.1)
    theirs = torch.optim.AdamW([reference], lr=0.1)
    for lr in (0.1, 0.05, 0.01):
        for optimizer in (ours, theirs):
            for group in optimizer.param_groups:
                group["lr"] = lr
        used.grad, reference.grad = torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.0])
        ours.step()
        theirs.step()
    assert torch.equal(unused.detach(), torch.ones(2)) and unused not in ours.state
    torch.testing.assert_close(used.detach(), reference.detach(), atol=0, rtol=0)
