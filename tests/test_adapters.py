"""The reference suite's entry points (tests/adapters.py) against torch's ops, the float64 model in
reference.py and the snapshots: checks of the glue, by keyword as the suite calls it. The same
math is tested through the project's own API in test_layers.py, test_model.py and test_data.py."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.attention import causal_mask
from params.init import init_params
from params.tree import flatten

from . import adapters
from .inputs import randint, randn, small_config, snapshot, snapshot_inputs
from .reference import attention64, block64, lm64, rope64

# -- layers and the loss ------------------------------------------------------------------------


def test_linear():
    w, x = randn(0, 5, 7), randn(1, 2, 3, 7)
    torch.testing.assert_close(adapters.run_linear(d_in=7, d_out=5, weights=w, in_features=x), F.linear(x, w))


def test_embedding():
    w = randn(0, 11, 4)
    ids = torch.tensor([[0, 10, 3], [3, 3, 1]])
    torch.testing.assert_close(adapters.run_embedding(vocab_size=11, d_model=4, weights=w, token_ids=ids), F.embedding(ids, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_keeps_the_input_dtype(dtype):
    w, x = randn(1, 16) + 1, randn(2, 3, 5, 16, scale=30.0).to(dtype)
    out = adapters.run_rmsnorm(d_model=16, eps=1e-5, weights=w, in_features=x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, F.rms_norm(x.float(), (16,), w, eps=1e-5).to(dtype))


def test_silu():
    x = randn(0, 4, 9, scale=5.0)
    torch.testing.assert_close(adapters.run_silu(in_features=x), F.silu(x))


def test_swiglu():
    w1, w2, w3, x = randn(1, 12, 8), randn(2, 8, 12), randn(3, 12, 8), randn(4, 2, 5, 8)
    expected = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    out = adapters.run_swiglu(d_model=8, d_ff=12, w1_weight=w1, w2_weight=w2, w3_weight=w3, in_features=x)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dim", [0, -1])
def test_softmax(dim):
    x = randn(0, 4, 6, 5, scale=20.0)
    torch.testing.assert_close(adapters.run_softmax(in_features=x, dim=dim), F.softmax(x, dim=dim))


def test_softmax_survives_huge_logits():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4]])
    torch.testing.assert_close(adapters.run_softmax(in_features=x, dim=-1), F.softmax(x.double(), dim=-1).float())


def test_cross_entropy():
    logits, targets = randn(0, 8, 30, scale=4.0), randint(1, 30, 8)
    torch.testing.assert_close(adapters.run_cross_entropy(inputs=logits, targets=targets), F.cross_entropy(logits, targets))


def test_cross_entropy_of_extreme_logits():
    logits, targets = randn(0, 6, 10, scale=1e3), randint(2, 10, 6)
    expected = F.cross_entropy(logits.double(), targets)
    torch.testing.assert_close(adapters.run_cross_entropy(inputs=logits, targets=targets).double(), expected, rtol=1e-5, atol=1e-3)


def test_gradient_clipping_matches_torch():
    def params_with_grads(seed):
        ps = [torch.nn.Parameter(randn(seed, 4, 3)), torch.nn.Parameter(randn(seed + 1, 5)), torch.nn.Parameter(randn(0, 2))]
        for p in ps[:2]:
            p.grad = randn(seed + 7, *p.shape, scale=3.0)
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


# -- attention and RoPE -------------------------------------------------------------------------


def test_attention_matches_snapshot():
    q, k, v, _, mask = snapshot_inputs()
    out = adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=mask)
    np.testing.assert_allclose(out.numpy(), snapshot("scaled_dot_product_attention"), atol=1e-6)


def test_4d_attention_matches_snapshot():
    q, k, v, _, mask = (t.reshape(2, 2, *t.shape[1:]) for t in snapshot_inputs())
    out = adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=mask)
    np.testing.assert_allclose(out.numpy(), snapshot("scaled_dot_product_attention_4d"), atol=1e-6)


def test_attention_without_a_mask_matches_torch():
    q, k, v = randn(0, 2, 7, 16), randn(1, 2, 9, 16), randn(2, 2, 9, 8)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v).double(), expected, atol=1e-5, rtol=1e-5)


def test_rope_matches_snapshot():
    x = snapshot_inputs()[3]
    out = adapters.run_rope(d_k=64, theta=10000, max_seq_len=12, in_query_or_key=x, token_positions=torch.arange(12))
    np.testing.assert_allclose(out.numpy(), snapshot("rope"), atol=1e-6)


def test_rope_at_arbitrary_positions():
    x = randn(0, 3, 5, 16)
    positions = torch.tensor([[0, 7, 3, 31, 2], [5, 5, 5, 0, 1], [1, 2, 3, 4, 5]])
    out = adapters.run_rope(d_k=16, theta=500.0, max_seq_len=32, in_query_or_key=x, token_positions=positions)
    torch.testing.assert_close(out.double(), rope64(x, positions, 500.0), atol=1e-5, rtol=1e-5)


def test_multihead_attention_matches_torch_module():
    d_model, heads, seq = 32, 4, 6
    x = randn(0, 2, seq, d_model)
    wq, wk, wv, wo = (randn(i, d_model, d_model) / d_model**0.5 for i in range(1, 5))
    reference = torch.nn.MultiheadAttention(d_model, heads, bias=False, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
        reference.out_proj.weight.copy_(wo)
    # nn.MultiheadAttention's boolean mask marks the positions NOT allowed to attend.
    expected, _ = reference(x, x, x, attn_mask=~causal_mask(seq, seq, x.device), need_weights=False)
    out = adapters.run_multihead_self_attention(
        d_model=d_model, num_heads=heads, q_proj_weight=wq, k_proj_weight=wk, v_proj_weight=wv, o_proj_weight=wo, in_features=x
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_multihead_attention_with_rope_matches_reference():
    config = small_config()
    weights = flatten(init_params(config, torch.Generator().manual_seed(0)))
    x = randn(1, 3, 10, config.d_model)
    out = adapters.run_multihead_self_attention_with_rope(
        d_model=config.d_model,
        num_heads=config.num_heads,
        max_seq_len=config.context_length,
        theta=config.rope_theta,
        q_proj_weight=weights["layers.0.attn.q_proj.weight"],
        k_proj_weight=weights["layers.0.attn.k_proj.weight"],
        v_proj_weight=weights["layers.0.attn.v_proj.weight"],
        o_proj_weight=weights["layers.0.attn.output_proj.weight"],
        in_features=x,
        token_positions=torch.arange(10),
    )
    torch.testing.assert_close(out.double(), attention64(weights, x.double(), config, "layers.0."), atol=1e-5, rtol=1e-5)


# -- the block and the model from state-dict weights --------------------------------------------


def test_transformer_block_matches_reference():
    config = small_config()
    weights = flatten(init_params(config, torch.Generator().manual_seed(1)))
    block = {name.removeprefix("layers.1."): w for name, w in weights.items() if name.startswith("layers.1.")}
    x = randn(2, 2, 9, config.d_model)
    out = adapters.run_transformer_block(
        d_model=config.d_model,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        max_seq_len=config.context_length,
        theta=config.rope_theta,
        weights=block,
        in_features=x,
    )
    torch.testing.assert_close(out.double(), block64(block, x.double(), config), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq", [16, 5])
def test_transformer_lm_matches_reference(seq):
    config = small_config()
    weights = flatten(init_params(config, torch.Generator().manual_seed(2)))
    tokens = randint(3, config.vocab_size, 2, seq)
    logits = adapters.run_transformer_lm(
        vocab_size=config.vocab_size,
        context_length=config.context_length,
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        rope_theta=config.rope_theta,
        weights=weights,
        in_indices=tokens,
    )
    assert logits.shape == (2, seq, config.vocab_size)
    torch.testing.assert_close(logits.double(), lm64(weights, tokens, config), atol=1e-4, rtol=1e-4)


# -- batches ------------------------------------------------------------------------------------


def test_get_batch_shapes_shift_and_uniform_starts():
    dataset = np.arange(0, 100)
    context_length, batch_size, iterations = 7, 32, 1000
    starts: Counter[int] = Counter()
    for _ in range(iterations):  # the suite's adapter takes no generator: torch's global RNG draws
        x, y = adapters.run_get_batch(dataset=dataset, batch_size=batch_size, context_length=context_length, device="cpu")
        assert x.shape == y.shape == (batch_size, context_length)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x + 1, y)
        starts.update(x[:, 0].tolist())
    possible = len(dataset) - context_length
    assert min(starts) == 0 and max(starts) == possible - 1
    expected = iterations * batch_size / possible
    # Each count is binomial: 5 standard deviations either side holds for every start.
    assert all(abs(starts[s] - expected) < 5 * np.sqrt(expected) for s in range(possible))


def test_get_batch_on_an_unavailable_device_raises():
    with pytest.raises((RuntimeError, AssertionError)):
        adapters.run_get_batch(dataset=np.arange(100), batch_size=4, context_length=7, device="cuda:99")
