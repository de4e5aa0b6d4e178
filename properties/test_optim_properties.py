"""Properties of the optimizer, the schedule and top-p sampling, checked with Hypothesis."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.optim import (
    EmptyState,
    adamw,
    add_decayed_weights,
    apply_updates,
    chain,
    clip_by_global_norm,
    global_norm,
    scale_by_adam,
)
from core.sampling import top_p_filter
from core.schedule import cosine_schedule

unit = st.floats(0.0, 0.999)
shape_lists = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple), min_size=1, max_size=3)
seeds = st.integers(0, 2**16)


def randn_leaves(shapes, generator, dtype=torch.float32, scale=1.0):
    return [scale * torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


@settings(max_examples=30)
@given(
    shapes=shape_lists,
    betas=st.tuples(unit, unit),
    eps=st.floats(1e-10, 1e-2),
    weight_decay=st.floats(0.0, 0.5),
    lr=st.floats(1e-5, 1e-1),
    steps=st.integers(1, 8),
    seed=seeds,
)
def test_adamw_agrees_with_torch_adamw(shapes, betas, eps, weight_decay, lr, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    params = randn_leaves(shapes, generator)
    reference = [p.clone().requires_grad_() for p in params]
    torch_opt = torch.optim.AdamW(reference, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
    optimizer = adamw(lr, *betas, eps=eps, weight_decay=weight_decay)
    state = optimizer.init(params)
    for _ in range(steps):
        grads = randn_leaves(shapes, generator)
        for p, g in zip(reference, grads):
            p.grad = g
        torch_opt.step()
        updates, state = optimizer.update(grads, state, params)
        params = apply_updates(params, updates)
    for ours, theirs in zip(params, reference):
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-5)


@given(shapes=shape_lists, scale=st.floats(1e-4, 1e4), max_norm=st.floats(1e-3, 1e3), seed=seeds)
def test_clipping_never_increases_the_norm_and_caps_it_at_max_norm(shapes, scale, max_norm, seed):
    grads = randn_leaves(shapes, torch.Generator().manual_seed(seed), torch.float64, scale)
    clipped, _ = clip_by_global_norm(max_norm).update(grads, EmptyState())
    before, after = global_norm(grads), global_norm(clipped)
    assert after <= before and after <= max_norm
    if before <= max_norm:
        assert all(torch.equal(a, b) for a, b in zip(clipped, grads))
    else:  # a common factor: the direction is kept
        factor = max_norm / (float(before) + 1e-6)
        assert all(torch.allclose(a, factor * b, rtol=1e-12, atol=0) for a, b in zip(clipped, grads))


@given(shapes=shape_lists, seed=seeds)
def test_applying_zero_updates_gives_the_same_params(shapes, seed):
    params = randn_leaves(shapes, torch.Generator().manual_seed(seed))
    new = apply_updates(params, [torch.zeros_like(p) for p in params])
    assert all(torch.equal(a, b) for a, b in zip(new, params))


@given(shapes=shape_lists, seed=seeds)
def test_an_empty_chain_is_the_identity(shapes, seed):
    updates = randn_leaves(shapes, torch.Generator().manual_seed(seed))
    identity = chain()
    assert identity.init(updates) == ()
    out, state = identity.update(updates, (), updates)
    assert out is updates and state == ()


@settings(max_examples=30)
@given(shapes=shape_lists, c=st.floats(1e-3, 1e3), betas=st.tuples(unit, unit), steps=st.integers(1, 6), seed=seeds)
def test_adam_without_eps_is_invariant_to_scaling_the_gradients(shapes, c, betas, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    adam = scale_by_adam(*betas, eps=0.0)
    params = randn_leaves(shapes, generator, torch.float64)
    state, scaled_state = adam.init(params), adam.init(params)
    for _ in range(steps):
        grads = randn_leaves(shapes, generator, torch.float64)
        updates, state = adam.update(grads, state)
        scaled, scaled_state = adam.update([c * g for g in grads], scaled_state)
        for a, b in zip(updates, scaled):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=0)


@given(shapes=shape_lists, flags=st.lists(st.booleans(), min_size=3, max_size=3), wd=st.floats(1e-4, 1.0), seed=seeds)
def test_decay_adds_wd_times_param_where_the_mask_is_true_and_nothing_elsewhere(shapes, flags, wd, seed):
    generator = torch.Generator().manual_seed(seed)
    params, updates = randn_leaves(shapes, generator), randn_leaves(shapes, generator)
    mask = flags[: len(shapes)]
    out, _ = add_decayed_weights(wd, mask).update(updates, EmptyState(), params)
    for o, u, p, flag in zip(out, updates, params, mask):
        if flag:
            torch.testing.assert_close(o, u + wd * p, rtol=1e-6, atol=1e-7)  # fused multiply-add: last-bit differences
        else:
            assert o is u


@given(
    max_lr=st.floats(1e-5, 1.0),
    ratio=st.floats(0.0, 1.0),
    warmup=st.integers(0, 50),
    decay_extra=st.integers(0, 200),
    step=st.integers(0, 400),
)
def test_schedule_stays_within_bounds_and_decreases_after_warmup(max_lr, ratio, warmup, decay_extra, step):
    final_lr, decay = max_lr * ratio, warmup + decay_extra
    lr = cosine_schedule(step, max_lr, final_lr, warmup, decay)
    assert 0.0 <= lr <= max_lr * (1 + 1e-12)
    if step >= warmup:
        assert lr >= final_lr * (1 - 1e-12)
        assert cosine_schedule(step + 1, max_lr, final_lr, warmup, decay) <= lr * (1 + 1e-12)
    else:
        assert lr <= cosine_schedule(step + 1, max_lr, final_lr, warmup, decay) * (1 + 1e-12)


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
