"""Incremental decoding with a KV cache gives the logits of a full forward pass."""

import pytest
import torch

from core.config import ModelConfig
from core.model import forward, forward_cached, init_kv_cache
from params.init import init_params


@pytest.mark.parametrize("overrides", [{}, {"position": "none"}, {"norm": "post"}])
def test_cached_steps_match_full_forward(overrides):
    config = ModelConfig(vocab_size=40, context_length=12, d_model=32, num_layers=2, num_heads=4, **overrides)
    params = init_params(config, torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    full = forward(params, tokens, config)

    cache = init_kv_cache(config, batch_size=2)
    prefix_logits, cache = forward_cached(params, tokens[:, :5], config, cache)
    steps = [prefix_logits]
    for t in range(5, 12):
        logits, cache = forward_cached(params, tokens[:, t : t + 1], config, cache)
        steps.append(logits)
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_cannot_grow_past_the_context():
    config = ModelConfig(vocab_size=40, context_length=4, d_model=16, num_layers=1, num_heads=2)
    params = init_params(config, torch.Generator().manual_seed(0))
    _, cache = forward_cached(params, torch.zeros(1, 4, dtype=torch.long), config, init_kv_cache(config, 1))
    with pytest.raises(ValueError, match="exceeds the model's context_length 4"):
        forward_cached(params, torch.zeros(1, 1, dtype=torch.long), config, cache)
