"""Sampling at the edges of its settings: a temperature or top-p too small for float32 still
gives a distribution (the greedy one), never NaN. Found by tests/test_numbers_checked.py."""

import pytest
import torch

from core.sampling import next_token_probs


@pytest.mark.parametrize("temperature, top_p", [(1e-300, 0.95), (1e-45, 1.0), (1.0, 1e-300), (1e-300, 1e-300), (1e-30, 1.0)])
def test_tiny_settings_give_the_greedy_distribution(temperature, top_p):
    logits = torch.tensor([[2.0, 5.0, -1.0, 5.0 - 1e-3, float("-inf")]])
    probs = next_token_probs(logits, temperature, top_p)
    assert torch.isfinite(probs).all() and torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]))


def test_an_ordinary_temperature_is_unchanged_by_the_shift():
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(next_token_probs(logits, 0.7), torch.softmax(logits / 0.7, dim=-1))
