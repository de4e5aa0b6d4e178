"""The benchmarks' expert peer (bench/peer.py) computes our model: same weights, same logits, same
loss and gradients, so its timings compare like with like."""

import pytest
import torch

from bench.peer import PeerLM, from_params, peer_state_dict
from core.config import ModelConfig
from core.loss import cross_entropy
from core.model import forward
from params.init import init_params
from params.tree import flatten, unflatten

CONFIG = ModelConfig(vocab_size=97, context_length=24, d_model=48, num_layers=2, num_heads=3, rope_theta=500.0)


def _tokens(seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, CONFIG.vocab_size, (3, seq + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("seq", [CONFIG.context_length, 7])
def test_peer_logits_equal_ours(seq):
    params = init_params(CONFIG, torch.Generator().manual_seed(0))
    x, _ = _tokens(seq)
    with torch.no_grad():
        torch.testing.assert_close(from_params(params, CONFIG)(x), forward(params, x, CONFIG), atol=1e-4, rtol=1e-4)


def test_peer_loss_and_gradients_equal_ours():
    params = init_params(CONFIG, torch.Generator().manual_seed(0))
    x, y = _tokens(CONFIG.context_length)
    peer = from_params(params, CONFIG)
    peer(x, y).backward()
    leaves = {name: leaf.detach().requires_grad_() for name, leaf in flatten(params).items()}
    ours = cross_entropy(forward(unflatten(leaves), x, CONFIG), y)
    torch.testing.assert_close(peer(x, y), ours, atol=1e-5, rtol=1e-5)
    ours.backward()
    expected = peer_state_dict(unflatten({n: t.grad for n, t in leaves.items()}), CONFIG)
    for name, param in peer.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_peer_refuses_ablations():
    with pytest.raises(ValueError, match="baseline"):
        PeerLM(ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=1, num_heads=2, tie_embeddings=True))
