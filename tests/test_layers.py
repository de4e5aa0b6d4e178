"""Layers, normalisation and the loss against torch's own ops on random inputs."""

import pytest
import torch
import torch.nn.functional as F

from core.layers import embedding, linear, log_softmax, rmsnorm, silu, silu_ffn, softmax, swiglu
from core.loss import cross_entropy

from .inputs import randint, randn


def test_linear_matches_torch():
    w, x = randn(0, 5, 7), randn(1, 2, 3, 7)
    torch.testing.assert_close(linear(w, x), F.linear(x, w))


def test_embedding_matches_torch():
    w = randn(0, 11, 4)
    ids = torch.tensor([[0, 10, 3], [3, 3, 1]])
    torch.testing.assert_close(embedding(w, ids), F.embedding(ids, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rmsnorm_matches_torch_and_keeps_dtype(dtype):
    w, x = randn(1, 16) + 1, randn(2, 3, 5, 16, scale=30.0).to(dtype)
    out = rmsnorm(w, x, eps=1e-5)
    assert out.dtype == dtype
    expected = F.rms_norm(x.float(), (16,), w, eps=1e-5).to(dtype)
    torch.testing.assert_close(out, expected)


def test_silu_matches_torch():
    x = randn(0, 4, 9, scale=5.0)
    torch.testing.assert_close(silu(x), F.silu(x))


def test_swiglu_matches_torch():
    w1, w2, w3, x = randn(1, 12, 8), randn(2, 8, 12), randn(3, 12, 8), randn(4, 2, 5, 8)
    expected = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    torch.testing.assert_close(swiglu(w1, w2, w3, x), expected)


def test_silu_ffn_matches_torch():
    w1, w2, x = randn(1, 32, 8), randn(2, 8, 32), randn(3, 3, 8)
    torch.testing.assert_close(silu_ffn(w1, w2, x), F.linear(F.silu(F.linear(x, w1)), w2))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dim):
    x = randn(0, 4, 6, 5, scale=20.0)
    torch.testing.assert_close(softmax(x, dim=dim), F.softmax(x, dim=dim))
    torch.testing.assert_close(log_softmax(x, dim=dim), F.log_softmax(x, dim=dim))


def test_softmax_survives_huge_logits():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4]])
    torch.testing.assert_close(softmax(x, dim=-1), F.softmax(x.double(), dim=-1).float())


def test_cross_entropy_matches_torch():
    logits, targets = randn(0, 8, 30, scale=4.0), randint(1, 30, 8)
    torch.testing.assert_close(cross_entropy(logits, targets), F.cross_entropy(logits, targets))


def test_cross_entropy_over_leading_dims_and_extreme_logits():
    logits, targets = randn(0, 2, 3, 10, scale=1e3), randint(2, 10, 2, 3)
    expected = F.cross_entropy(logits.double().reshape(-1, 10), targets.reshape(-1))
    torch.testing.assert_close(cross_entropy(logits, targets).double(), expected, rtol=1e-5, atol=1e-3)


def test_cross_entropy_of_half_precision_logits_is_computed_in_float32():
    # bf16 logits as autocast produces them: the loss is float32 and equals that of the upcast logits.
    logits, targets = randn(0, 16, 300, scale=50.0).bfloat16(), randint(1, 300, 16)
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), targets))
