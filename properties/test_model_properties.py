"""Properties of the numerics and the model that hold for every input, checked with Hypothesis."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import examples
from core.attention import rope
from core.config import ModelConfig
from core.layers import log_softmax, rmsnorm, softmax
from core.loss import cross_entropy
from core.model import forward
from params.init import init_params

finite_logits = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


def logit_rows(max_vocab: int = 40):
    return st.integers(2, max_vocab).flatmap(
        lambda v: arrays("float32", st.tuples(st.integers(1, 4), st.just(v)), elements=finite_logits)
    ).map(torch.from_numpy)


@given(logit_rows())
def test_softmax_is_a_finite_distribution(x):
    p = softmax(x, dim=-1)
    assert torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=-1), torch.ones(x.shape[0]), atol=1e-5, rtol=0)


@given(logit_rows(), st.floats(-1e3, 1e3))
def test_softmax_is_shift_invariant(x, shift):
    torch.testing.assert_close(softmax(x + shift, dim=-1), softmax(x, dim=-1), atol=1e-4, rtol=0)


@given(logit_rows(), st.data())
def test_cross_entropy_is_finite_non_negative_and_the_gathered_log_softmax(x, data):
    targets = torch.tensor(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=x.shape[0], max_size=x.shape[0])))
    loss = cross_entropy(x, targets)
    assert torch.isfinite(loss) and loss >= 0
    expected = -log_softmax(x.double(), dim=-1).gather(-1, targets[:, None]).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-3)


@given(st.integers(2, 50_000), st.floats(-1e4, 1e4))
@settings(max_examples=examples(30))
def test_cross_entropy_of_equal_logits_is_log_vocab(vocab, value):
    logits = torch.full((3, vocab), value)
    loss = cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    assert math.isclose(loss.item(), math.log(vocab), rel_tol=1e-5)


vectors = arrays("float32", st.tuples(st.integers(1, 3), st.just(16)), elements=st.floats(-100, 100, width=32))


@given(vectors.filter(lambda a: (abs(a).sum(axis=-1) > 1e-2).all()), st.floats(1e-2, 1e3))
def test_rmsnorm_is_scale_invariant(x, scale):
    x, weight = torch.from_numpy(x), torch.linspace(0.5, 2.0, 16)
    # Invariance is exact only without eps (eps matters for vectors near zero, which is its purpose).
    torch.testing.assert_close(rmsnorm(weight, x * scale, eps=0.0), rmsnorm(weight, x, eps=0.0), atol=1e-4, rtol=1e-4)


@given(
    arrays("float32", (2, 5, 8), elements=st.floats(-10, 10, width=32)),
    arrays("int64", (5,), elements=st.integers(0, 63)),
)
def test_rope_preserves_norms(x, positions):
    x = torch.from_numpy(x)
    out = rope(x, torch.from_numpy(positions), 10000.0, 64)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-4)


@given(
    arrays("float32", (2, 8), elements=st.floats(-3, 3, width=32)),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(-20, 20),
)
def test_rope_dot_products_depend_only_on_relative_position(qk, m, n, shift):
    q, k = torch.from_numpy(qk).double()[:, None, :]  # each (seq=1, d_k=8)
    shift = max(shift, -min(m, n))  # both shifted positions stay in range

    def score(a: int, b: int) -> torch.Tensor:
        return rope(q, torch.tensor([a]), 100.0, 64) @ rope(k, torch.tensor([b]), 100.0, 64).T

    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-4, rtol=1e-4)


CAUSAL_CONFIG = ModelConfig(vocab_size=30, context_length=12, d_model=32, num_layers=2, num_heads=4)
CAUSAL_PARAMS = init_params(CAUSAL_CONFIG, torch.Generator().manual_seed(0))


@given(
    st.lists(st.integers(0, 29), min_size=2, max_size=12),
    st.data(),
    st.sampled_from([{}, {"norm": "post"}, {"position": "none"}]),
)
@settings(max_examples=examples(40))
def test_changing_a_token_never_changes_earlier_logits(tokens, data, ablation):
    config = ModelConfig(**{**CAUSAL_CONFIG.to_dict(), **ablation})
    params = CAUSAL_PARAMS if not ablation else init_params(config, torch.Generator().manual_seed(0))
    t = data.draw(st.integers(0, len(tokens) - 1))
    changed = list(tokens)
    changed[t] = (changed[t] + data.draw(st.integers(1, 29))) % 30
    before = forward(params, torch.tensor([tokens]), config)
    after = forward(params, torch.tensor([changed]), config)
    torch.testing.assert_close(before[:, :t], after[:, :t], atol=0, rtol=0)
    assert not torch.equal(before[:, t], after[:, t])
