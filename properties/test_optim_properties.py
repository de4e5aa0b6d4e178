"""Properties of the optimizer, the schedule and top-p sampling, checked with Hypothesis."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.optim import AdamWHParams, adamw_init, adamw_update
from core.sampling import top_p_filter
from core.schedule import cosine_schedule

unit = st.floats(0.0, 0.999)


@settings(max_examples=30)
@given(
    shapes=st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple), min_size=1, max_size=3),
    betas=st.tuples(unit, unit),
    eps=st.floats(1e-10, 1e-2),
    weight_decay=st.floats(0.0, 0.5),
    lr=st.floats(1e-5, 1e-1),
    steps=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_pure_adamw_agrees_with_torch_adamw(shapes, betas, eps, weight_decay, lr, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator) for shape in shapes]
    reference = [p.clone().requires_grad_() for p in params]
    torch_opt = torch.optim.AdamW(reference, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    state = adamw_init(params)
    for _ in range(steps):
        grads = [torch.randn(shape, generator=generator) for shape in shapes]
        for p, g in zip(reference, grads):
            p.grad = g
        torch_opt.step()
        params, state = adamw_update(grads, state, params, AdamWHParams(betas, eps, weight_decay), lr)
    for ours, theirs in zip(params, reference):
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-5)


@given(
    max_lr=st.floats(1e-5, 1.0),
    ratio=st.floats(0.0, 1.0),
    warmup=st.integers(0, 50),
    cycle_extra=st.integers(0, 200),
    it=st.integers(0, 400),
)
def test_schedule_stays_within_bounds_and_decreases_after_warmup(max_lr, ratio, warmup, cycle_extra, it):
    min_lr, cycle = max_lr * ratio, warmup + cycle_extra
    lr = cosine_schedule(it, max_lr, min_lr, warmup, cycle)
    assert 0.0 <= lr <= max_lr * (1 + 1e-12)
    if it >= warmup:
        assert lr >= min_lr * (1 - 1e-12)
        assert cosine_schedule(it + 1, max_lr, min_lr, warmup, cycle) <= lr * (1 + 1e-12)
    else:
        assert lr <= cosine_schedule(it + 1, max_lr, min_lr, warmup, cycle) * (1 + 1e-12)


@given(
    logits=st.lists(st.floats(-10, 10), min_size=2, max_size=30).map(torch.tensor),
    p=st.floats(0.01, 1.0),
)
def test_top_p_keeps_a_minimal_prefix_of_the_sorted_distribution(logits, p):
    probs = torch.softmax(logits.double(), -1)
    filtered = top_p_filter(probs, p)
    kept = filtered > 0
    assert math.isclose(float(filtered.sum()), 1.0, rel_tol=1e-9)
    # Every kept token is at least as likely as every dropped one.
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()
    # The kept mass reaches p, and dropping the least likely kept token would fall short of it.
    mass = float(probs[kept].sum())
    assert mass >= p - 1e-9
    assert mass - float(probs[kept].min()) < p + 1e-9
