"""The model's pieces against snapshots, torch's own ops and the float64 reference in reference.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.attention import causal_mask, multihead_self_attention, rope, rope_table, scaled_dot_product_attention
from core.loss import cross_entropy
from core.model import forward, transformer_block
from params.init import init_params
from params.load import load_params
from params.modules import TransformerLM
from params.tree import flatten

from .inputs import randint, randn, small_config, snapshot, snapshot_inputs
from .reference import attention64, block64, lm64, rope64, torch_causal_self_attention


def test_attention_matches_snapshot():
    q, k, v, _, mask = snapshot_inputs()
    out = scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out.numpy(), snapshot("scaled_dot_product_attention"), atol=1e-6)


def test_4d_attention_matches_snapshot():
    q, k, v, _, mask = (t.reshape(2, 2, *t.shape[1:]) for t in snapshot_inputs())
    out = scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out.numpy(), snapshot("scaled_dot_product_attention_4d"), atol=1e-6)


def test_rope_matches_snapshot():
    x = snapshot_inputs()[3]
    out = rope(x, torch.arange(12), theta=10000.0, max_seq_len=12)
    np.testing.assert_allclose(out.numpy(), snapshot("rope"), atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["none", "random", "causal"])
def test_attention_matches_torch(mask_kind):
    q, k, v = randn(0, 2, 3, 7, 16), randn(1, 2, 3, 9, 16), randn(2, 2, 3, 9, 8)
    mask = {"none": None, "random": randn(3, 2, 1, 7, 9) > -0.5, "causal": causal_mask(7, 9, q.device)}[mask_kind]
    if mask is not None:
        mask[..., 0] = True  # every query keeps at least one key, so no row is all -inf
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask).double(), expected, atol=1e-5, rtol=1e-5)


def test_masked_keys_get_no_weight():
    q, k, v = randn(0, 1, 4, 8), randn(1, 1, 6, 8), randn(2, 1, 6, 8)
    mask = torch.ones(1, 4, 6, dtype=torch.bool)
    mask[..., 3] = False
    changed = v.clone()
    changed[:, 3] += 100.0
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), scaled_dot_product_attention(q, k, changed, mask))


def test_rope_matches_complex_rotation_at_arbitrary_positions():
    x = randn(0, 3, 2, 5, 16)
    positions = torch.tensor([[0, 7, 3, 31, 2], [5, 5, 5, 0, 1], [1, 2, 3, 4, 5]])[:, None, :]
    out = rope(x, positions, theta=500.0, max_seq_len=32)
    torch.testing.assert_close(out.double(), rope64(x, positions, 500.0), atol=1e-5, rtol=1e-5)


def test_rope_table_is_cached_per_shape_and_device():
    a = rope_table(16, 10000.0, 32, torch.device("cpu"))
    assert rope_table(16, 10000.0, 32, torch.device("cpu")) is a
    assert rope_table(16, 10000.0, 64, torch.device("cpu")) is not a


def test_rope_table_carries_the_mark_that_torch_compiler_gives_a_constant():
    def table():
        return 1

    marked = torch.compiler.assume_constant_result(table)
    assert vars(marked) and vars(marked).items() <= vars(rope_table).items()


def test_rope_table_first_built_inside_torch_func_grad_is_a_plain_tensor():
    def loss(x):
        cos, _ = rope_table(6, 123.0, 8, x.device)
        return (x * cos[1, 0]).sum()

    torch.func.grad(loss)(torch.ones(3))
    cos, _ = rope_table(6, 123.0, 8, torch.device("cpu"))
    assert not torch._C._functorch.is_functorch_wrapped_tensor(cos)


def test_multihead_attention_matches_torch_module():
    d_model, heads, seq = 32, 4, 6
    x = randn(0, 2, seq, d_model)
    wq, wk, wv, wo = (randn(i, d_model, d_model) / d_model**0.5 for i in range(1, 5))
    expected = torch_causal_self_attention(x, wq, wk, wv, wo, heads)
    params = {"q_proj": {"weight": wq}, "k_proj": {"weight": wk}, "v_proj": {"weight": wv}, "output_proj": {"weight": wo}}
    torch.testing.assert_close(multihead_self_attention(params, x, heads), expected, atol=1e-5, rtol=1e-5)


def test_multihead_attention_with_rope_matches_reference():
    config = small_config()
    params = init_params(config, torch.Generator().manual_seed(0))
    x = randn(1, 3, 10, config.d_model)
    out = multihead_self_attention(
        params["layers"][0]["attn"], x, config.num_heads, rope_theta=config.rope_theta, max_seq_len=config.context_length
    )
    expected = attention64(flatten(params), x.double(), config, "layers.0.")
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_transformer_block_matches_reference():
    config = small_config()
    params = init_params(config, torch.Generator().manual_seed(1))
    x = randn(2, 2, 9, config.d_model)
    expected = block64(flatten(params), x.double(), config, "layers.1.")
    torch.testing.assert_close(transformer_block(params["layers"][1], x, config).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq", [16, 5])
def test_forward_matches_reference(seq):
    config = small_config()
    params = init_params(config, torch.Generator().manual_seed(2))
    tokens = randint(3, config.vocab_size, 2, seq)
    logits = forward(params, tokens, config)
    assert logits.shape == (2, seq, config.vocab_size)
    torch.testing.assert_close(logits.double(), lm64(flatten(params), tokens, config), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "ablation",
    [dict(norm="post"), dict(norm="none"), dict(position="none"), dict(ffn="silu", d_ff=None), dict(tie_embeddings=True)],
    ids=["post-norm", "no-norm", "nope", "silu-ffn", "tied"],
)
def test_ablations_match_reference(ablation):
    config = small_config(**ablation)
    params = init_params(config, torch.Generator().manual_seed(4))
    tokens = randint(5, config.vocab_size, 2, 11)
    torch.testing.assert_close(forward(params, tokens, config).double(), lm64(flatten(params), tokens, config), atol=1e-4, rtol=1e-4)


def test_longer_than_context_is_a_clear_error():
    config = small_config()
    params = init_params(config, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="exceeds the model's context_length 16"):
        forward(params, torch.zeros(1, 17, dtype=torch.long), config)


def test_bf16_forward_stays_close_to_float32():
    config = small_config()
    params = init_params(config, torch.Generator().manual_seed(0))
    tokens = randint(1, config.vocab_size, 2, 8)
    half = forward(init_params(config, torch.Generator().manual_seed(0), dtype=torch.bfloat16), tokens, config)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), forward(params, tokens, config), atol=0.1, rtol=0.05)


@pytest.mark.slow  # torch.compile: 10-15 s on a busy 2-core CPU
def test_compiled_forward_and_func_grad_match_eager():
    config = small_config(num_layers=1)
    params = init_params(config, torch.Generator().manual_seed(0))
    tokens = randint(1, config.vocab_size, 2, 9)

    def loss(p):
        return cross_entropy(forward(p, tokens[:, :-1], config), tokens[:, 1:])

    compiled_grads, compiled_loss = torch.compile(torch.func.grad_and_value(loss))(params)
    grads, value = torch.func.grad_and_value(loss)(params)
    torch.testing.assert_close(compiled_loss, value, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flatten(compiled_grads), flatten(grads), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.compile(forward)(params, tokens, config), forward(params, tokens, config), atol=1e-5, rtol=1e-5)


# -- the nn.Module shell ------------------------------------------------------------------------


def test_module_shell_state_dict_uses_reference_names():
    config = small_config(num_layers=1)
    names = set(TransformerLM(config, torch.Generator().manual_seed(0)).state_dict())
    expected = {
        "token_embeddings.weight",
        "ln_final.weight",
        "lm_head.weight",
        *(f"layers.0.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "output_proj")),
        *(f"layers.0.{p}.weight" for p in ("ln1", "ln2", "ffn.w1", "ffn.w2", "ffn.w3")),
    }
    assert names == expected


def test_module_shell_is_the_pure_forward_and_trains():
    config = small_config()
    module = TransformerLM(config, generator=torch.Generator().manual_seed(6))
    tokens = randint(1, config.vocab_size, 2, 8)
    params = {name: p.detach() for name, p in module.state_dict().items()}
    torch.testing.assert_close(module(tokens), forward(load_params(params, config), tokens, config))
    module(tokens).sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_module_shell_without_a_generator_draws_from_torchs_rng():
    # The global RNG's state is restored, not seeded: the shell must draw from it, like torch's modules.
    config = small_config(num_layers=1)
    state = torch.get_rng_state()
    a = TransformerLM(config).state_dict()
    b = TransformerLM(config).state_dict()
    torch.set_rng_state(state)
    again = TransformerLM(config).state_dict()
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])
    assert all(torch.equal(a[name], again[name]) for name in a)
