"""Layers, normalisation and the loss against torch's own ops on random inputs."""

import pytest
import torch
import torch.nn.functional as F

from core.layers import log_softmax, silu_ffn

from . import adapters


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_linear_matches_torch():
    w, x = rand(5, 7), rand(2, 3, 7, seed=1)
    torch.testing.assert_close(adapters.run_linear(d_in=7, d_out=5, weights=w, in_features=x), F.linear(x, w))


def test_embedding_matches_torch():
    w = rand(11, 4)
    ids = torch.tensor([[0, 10, 3], [3, 3, 1]])
    torch.testing.assert_close(adapters.run_embedding(vocab_size=11, d_model=4, weights=w, token_ids=ids), F.embedding(ids, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rmsnorm_matches_torch_and_keeps_dtype(dtype):
    w, x = rand(16, seed=1) + 1, rand(3, 5, 16, seed=2, scale=30.0).to(dtype)
    out = adapters.run_rmsnorm(d_model=16, eps=1e-5, weights=w, in_features=x)
    assert out.dtype == dtype
    expected = F.rms_norm(x.float(), (16,), w, eps=1e-5).to(dtype)
    torch.testing.assert_close(out, expected)


def test_silu_matches_torch():
    x = rand(4, 9, scale=5.0)
    torch.testing.assert_close(adapters.run_silu(in_features=x), F.silu(x))


def test_swiglu_matches_torch():
    w1, w2, w3, x = rand(12, 8, seed=1), rand(8, 12, seed=2), rand(12, 8, seed=3), rand(2, 5, 8, seed=4)
    expected = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    out = adapters.run_swiglu(d_model=8, d_ff=12, w1_weight=w1, w2_weight=w2, w3_weight=w3, in_features=x)
    torch.testing.assert_close(out, expected)


def test_silu_ffn_matches_torch():
    w1, w2, x = rand(32, 8, seed=1), rand(8, 32, seed=2), rand(3, 8, seed=3)
    torch.testing.assert_close(silu_ffn(w1, w2, x), F.linear(F.silu(F.linear(x, w1)), w2))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dim):
    x = rand(4, 6, 5, scale=20.0)
    torch.testing.assert_close(adapters.run_softmax(in_features=x, dim=dim), F.softmax(x, dim=dim))
    torch.testing.assert_close(log_softmax(x, dim=dim), F.log_softmax(x, dim=dim))


def test_softmax_survives_huge_logits():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4]])
    torch.testing.assert_close(adapters.run_softmax(in_features=x, dim=-1), F.softmax(x.double(), dim=-1).float())


def test_cross_entropy_matches_torch():
    logits, targets = rand(8, 30, scale=4.0), torch.randint(0, 30, (8,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(adapters.run_cross_entropy(inputs=logits, targets=targets), F.cross_entropy(logits, targets))


def test_cross_entropy_over_leading_dims_and_extreme_logits():
    logits = rand(2, 3, 10, scale=1e3)
    targets = torch.randint(0, 10, (2, 3), generator=torch.Generator().manual_seed(2))
    expected = F.cross_entropy(logits.double().reshape(-1, 10), targets.reshape(-1))
    torch.testing.assert_close(adapters.run_cross_entropy(inputs=logits, targets=targets).double(), expected, rtol=1e-5, atol=1e-3)


def test_gradient_clipping_matches_torch():
    def params_with_grads(seed):
        ps = [torch.nn.Parameter(rand(4, 3, seed=seed)), torch.nn.Parameter(rand(5, seed=seed + 1)), torch.nn.Parameter(rand(2))]
        for p in ps[:2]:
            p.grad = rand(*p.shape, seed=seed + 7, scale=3.0)
        return ps  # the last parameter has no gradient, which must be allowed

    ours, theirs = params_with_grads(0), params_with_grads(0)
    adapters.run_gradient_clipping(ours, max_l2_norm=1.0)
    torch.nn.utils.clip_grad_norm_(theirs[:2], max_norm=1.0)
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_gradient_clipping_leaves_small_gradients_alone():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.1, 0.2, 0.2])
    adapters.run_gradient_clipping([p], max_l2_norm=1.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.1, 0.2, 0.2]))
