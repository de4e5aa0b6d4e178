"""The fast path (ModelConfig.kernels="torch": torch's fused kernels) against the reference math
(kernels="reference", the handout's oracle): the same logits and gradients for every ablation,
the same logits when decoding against a KV cache, and the same head and pair rearrangements
(views on the fast path, einx expressions in the reference)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core.attention import (
    FAST_ATTENTION,
    REFERENCE_ATTENTION,
    causal_mask,
    fast_merge_heads,
    fast_rotate_pairs,
    fast_split_heads,
    fused_causal_attention,
    merge_heads,
    rotate_pairs,
    scaled_dot_product_attention,
    split_heads,
)
from core.config import ModelConfig
from core.layers import fused_rmsnorm, rmsnorm, silu_ffn, swiglu
from core.loss import cross_entropy, fused_cross_entropy
from core.model import KERNELS, forward, forward_cached, init_kv_cache
from core.train_step import make_grad_and_value
from core.tree import tree_leaves
from params.init import init_params

ABLATIONS = [
    {},
    {"norm": "post"},
    {"norm": "none"},
    {"position": "none"},
    {"ffn": "silu"},
    {"tie_embeddings": True},
    {"qk_norm": True},
    {"ffn": "relu2"},
    {"logit_softcap": 2.0},
    {"zero_init_out_proj": True},
    {"value_residual": True},
]
TOL = dict(atol=1e-5, rtol=1e-4)


def config(kernels: str, **overrides) -> ModelConfig:
    base = dict(vocab_size=50, context_length=12, d_model=32, num_layers=2, num_heads=4, d_ff=48, rope_theta=1000.0)
    return ModelConfig(**{**base, **overrides}, kernels=kernels)


def tokens(seed: int, config: ModelConfig, batch: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_kernels_is_validated_and_defaults_to_torch():
    assert ModelConfig(vocab_size=5, context_length=4, d_model=8, num_layers=1, num_heads=2).kernels == "torch"
    with pytest.raises(ValueError, match="kernels must be one of"):
        config("fast")


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "baseline")
def test_fast_path_matches_reference_logits_and_gradients(overrides):
    reference, fast = config("reference", **overrides), config("torch", **overrides)
    params = init_params(reference, torch.Generator().manual_seed(0))
    x, y = tokens(1, reference), tokens(2, reference)

    torch.testing.assert_close(forward(params, x, fast), forward(params, x, reference), **TOL)
    # make_grad_and_value's loss also dispatches on config.kernels (F.cross_entropy vs the reference).
    fast_grads, fast_loss = make_grad_and_value(fast)(params, x, y)
    reference_grads, reference_loss = make_grad_and_value(reference)(params, x, y)
    torch.testing.assert_close(fast_loss, reference_loss, **TOL)
    for fast_grad, reference_grad in zip(tree_leaves(fast_grads), tree_leaves(reference_grads), strict=True):
        torch.testing.assert_close(fast_grad, reference_grad, **TOL)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"position": "none"}, {"norm": "post"}, {"qk_norm": True, "value_residual": True, "logit_softcap": 2.0}],
    ids=["rope", "nope", "post", "qk-norm,value-residual,softcap"],
)
def test_fast_cached_decoding_matches_full_forward(overrides):
    """A 4-token prefix (queries == keys), a 3-token chunk over the cache (1 < queries < keys: the
    mask must be aligned bottom-right) and single tokens (no mask) give the full pass's logits."""
    fast = config("torch", **overrides)
    params = init_params(fast, torch.Generator().manual_seed(0))
    ids = tokens(3, fast)

    cache = init_kv_cache(fast, batch_size=2)
    steps = []
    for start, stop in [(0, 4), (4, 7)] + [(t, t + 1) for t in range(7, 12)]:
        logits, cache = forward_cached(params, ids[:, start:stop], fast, cache)
        steps.append(logits)
    decoded = torch.cat(steps, dim=1)
    assert cache.length == 12
    torch.testing.assert_close(decoded, forward(params, ids, fast), **TOL)
    torch.testing.assert_close(decoded, forward(params, ids, replace(fast, kernels="reference")), **TOL)


@pytest.mark.parametrize("num_queries", [6, 3, 1])
def test_fused_causal_attention_aligns_the_mask_bottom_right(num_queries):
    q, k, v = randn(0, 2, 3, num_queries, 8), randn(1, 2, 3, 6, 8), randn(2, 2, 3, 6, 8)
    expected = scaled_dot_product_attention(q, k, v, causal_mask(num_queries, 6, q.device))
    torch.testing.assert_close(fused_causal_attention(q, k, v), expected, **TOL)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=["no-batch", "batch", "batch,heads"])
def test_fast_views_equal_the_einx_reference_bit_for_bit(batch):
    x, rotation = randn(0, *batch, 5, 16), (randn(1, 5, 8), randn(2, 5, 8))
    heads = split_heads(x, 4)
    assert heads.shape == (*batch, 4, 5, 4) and torch.equal(heads[..., 1, :, :], x[..., 4:8])  # head h: columns h*d_k ..
    assert torch.equal(fast_split_heads(x, 4), heads)
    assert torch.equal(fast_merge_heads(heads), merge_heads(heads)) and torch.equal(merge_heads(heads), x)
    rotated = rotate_pairs(x, rotation)
    assert torch.equal(fast_rotate_pairs(x, rotation), rotated)
    cos, sin = rotation
    torch.testing.assert_close(rotated[..., 2:4], torch.stack((x[..., 2] * cos[:, 1] - x[..., 3] * sin[:, 1],
                                                               x[..., 2] * sin[:, 1] + x[..., 3] * cos[:, 1]), dim=-1))
    assert KERNELS["reference"].attention is REFERENCE_ATTENTION and KERNELS["torch"].attention is FAST_ATTENTION


def test_the_reference_path_runs_under_vmap_of_grad():
    """einx under torch.func: per-sequence gradients through vmap equal those taken one by one (as
    the GNS test's ground truth takes them)."""
    reference = config("reference")
    params = init_params(reference, torch.Generator().manual_seed(0))
    x, y = tokens(1, reference, batch=3), tokens(2, reference, batch=3)
    one = torch.func.grad(lambda p, xi, yi: cross_entropy(forward(p, xi[None], reference), yi[None]))
    batched = torch.func.vmap(one, in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        for leaf, single in zip(tree_leaves(batched), tree_leaves(one(params, x[i], y[i])), strict=True):
            torch.testing.assert_close(leaf[i], single, **TOL)


@pytest.mark.slow
def test_the_reference_path_compiles_to_the_same_logits_and_gradients():
    """bench/model.py compiles the reference math (einx's ops are allowed in dynamo's graph)."""
    reference = config("reference")
    params = init_params(reference, torch.Generator().manual_seed(0))
    x, y = tokens(1, reference), tokens(2, reference)

    def loss(p):
        return cross_entropy(forward(p, x, reference), y)

    compiled_grads, compiled_loss = torch.compile(torch.func.grad_and_value(loss))(params)
    grads, value = torch.func.grad_and_value(loss)(params)
    torch.testing.assert_close(compiled_loss, value, **TOL)
    for compiled_grad, grad in zip(tree_leaves(compiled_grads), tree_leaves(grads), strict=True):
        torch.testing.assert_close(compiled_grad, grad, **TOL)
    torch.testing.assert_close(torch.compile(forward)(params, x, reference), forward(params, x, reference), **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rmsnorm_computes_in_float32_and_keeps_the_dtype(dtype):
    weight, x = 1 + 0.1 * randn(0, 16), (30 * randn(1, 3, 5, 16)).to(dtype)
    out = fused_rmsnorm(weight, x, eps=1e-5)
    assert out.dtype == dtype
    torch.testing.assert_close(out, rmsnorm(weight, x, eps=1e-5), **TOL)


def test_fused_feed_forwards_match_reference():
    w1, w2, w3, x = randn(0, 12, 8), randn(1, 8, 12), randn(2, 12, 8), randn(3, 2, 5, 8)
    torch.testing.assert_close(swiglu(w1, w2, w3, x, F.silu), swiglu(w1, w2, w3, x), **TOL)
    torch.testing.assert_close(silu_ffn(w1, w2, x, F.silu), silu_ffn(w1, w2, x), **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_matches_reference_in_float32(dtype):
    logits = (randn(0, 2, 7, 30) * 40).to(dtype).requires_grad_()
    targets = torch.randint(0, 30, (2, 7), generator=torch.Generator().manual_seed(1))
    fast, reference = fused_cross_entropy(logits, targets), cross_entropy(logits, targets)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, **TOL)
    (fast_grad,), (reference_grad,) = torch.autograd.grad(fast, logits), torch.autograd.grad(reference, logits)
    torch.testing.assert_close(fast_grad, reference_grad, **TOL)
    assert KERNELS["torch"].cross_entropy is fused_cross_entropy and KERNELS["reference"].cross_entropy is cross_entropy
