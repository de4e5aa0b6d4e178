"""core.optim (optax-style gradient transformations) against torch.optim.AdamW, torch's gradient
clipping and the handout's Algorithm 1. (The Optimizer shell, through the adapters, is tested in
test_adapters.py.)"""

import io
import math

import pytest
import torch

from core.optim import (
    EmptyState,
    ScaleByAdamState,
    ScaleByLearningRateState,
    adamw,
    add_decayed_weights,
    apply_updates,
    chain,
    clip_by_global_norm,
    decay_matrices,
    global_norm,
    scale_by_adam,
    scale_by_learning_rate,
)
from core.schedule import warmup_cosine
from core.tree import tree_flatten, tree_from_leaves_by_path, tree_leaves, tree_leaves_by_path, tree_map
from tests.inputs import like, model_tree


def torch_adamw(params, lr, betas, eps, weight_decay, masked: bool) -> tuple[torch.optim.AdamW, list[torch.Tensor]]:
    """torch.optim.AdamW over copies of the leaves; masked: 1-D leaves in a group without decay."""
    leaves = [p.clone() for p in tree_leaves(params)]
    groups = [{"params": leaves}]
    if masked:
        matrices, gains = [p for p in leaves if p.ndim >= 2], [p for p in leaves if p.ndim < 2]
        groups = [{"params": matrices}, {"params": gains, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
    return optimizer, leaves


def run_both(dtype, masked, steps=200, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, seed=0, donate=False):
    """Ours (donating its inputs or not) and torch's AdamW over the same gradient sequence; returns
    both final leaf lists."""
    generator = torch.Generator().manual_seed(seed)
    params = model_tree(generator, dtype)
    reference, leaves = torch_adamw(params, lr, betas, eps, weight_decay, masked)
    optimizer = adamw(lr, *betas, eps=eps, weight_decay=weight_decay, mask=decay_matrices if masked else None)
    state = optimizer.init(params)
    for _ in range(steps):
        grads = like(params, generator)
        for leaf, grad in zip(leaves, tree_leaves(grads), strict=True):
            leaf.grad = grad.clone()
        reference.step()
        updates, state = optimizer.update(grads, state, params, donate=donate)
        params = apply_updates(params, updates, donate=donate)
    return tree_leaves(params), leaves, state


@pytest.mark.parametrize("masked", [False, True])
def test_adamw_equals_torch_adamw_in_float64(masked):
    ours, theirs, state = run_both(torch.float64, masked)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert state[0].count == 200 and state[2].count == 200


@pytest.mark.parametrize("masked", [False, True])
def test_a_donated_update_gives_the_same_numbers_in_place(masked):
    kept, _, kept_state = run_both(torch.float32, masked, steps=30)
    donated, _, donated_state = run_both(torch.float32, masked, steps=30, donate=True)
    assert kept_state[0].count == donated_state[0].count == 30
    for a, b in zip(kept + tree_leaves(kept_state[0][1:]), donated + tree_leaves(donated_state[0][1:]), strict=True):
        assert torch.equal(a, b)


def test_donation_writes_into_the_inputs_and_its_absence_leaves_them_alone():
    generator = torch.Generator().manual_seed(4)
    params = model_tree(generator)
    optimizer = chain(clip_by_global_norm(0.1), adamw(1e-2, weight_decay=0.1, mask=decay_matrices))
    state = optimizer.update(like(params, generator), optimizer.init(params), params)[1]
    grads = like(params, generator)
    inputs = (params, state[1][0].mu, state[1][0].nu, grads)
    before = [t.clone() for t in tree_leaves(inputs)]
    updates, new_state = optimizer.update(grads, state, params)
    new_params = apply_updates(params, updates)
    assert all(torch.equal(t, b) for t, b in zip(tree_leaves(inputs), before, strict=True))

    updates, donated_state = optimizer.update(grads, state, params, donate=True)
    donated_params = apply_updates(params, updates, donate=True)
    storage = {t.data_ptr() for t in tree_leaves(inputs)}
    outputs = (donated_params, donated_state[1][0].mu, donated_state[1][0].nu)
    assert all(t.data_ptr() in storage for t in tree_leaves(outputs))
    expected = (new_params, new_state[1][0].mu, new_state[1][0].nu)
    for a, b in zip(tree_leaves(expected), tree_leaves(outputs), strict=True):
        assert torch.equal(a, b)


def test_the_mask_spares_the_gains_and_only_them():
    masked, _, _ = run_both(torch.float64, masked=True, steps=20)
    unmasked, _, _ = run_both(torch.float64, masked=False, steps=20)
    for a, b in zip(masked, unmasked, strict=True):
        assert torch.equal(a, b) == (a.ndim >= 2)


@pytest.mark.parametrize("masked", [False, True])
def test_adamw_in_float32_is_closer_to_the_float64_run_than_torch_in_float32(masked):
    # We round once per step (theta + update), torch twice (theta (1 - lr wd), then the Adam step),
    # so the float32 runs drift apart (~6e-6 after these 200 steps); ours is the more accurate one.
    exact, _, _ = run_both(torch.float64, masked)
    ours, theirs, _ = run_both(torch.float32, masked)

    def error(leaves):
        return max((a.double() - b).abs().max().item() for a, b in zip(leaves, exact, strict=True))

    assert error(ours) < error(theirs) < 1e-4
    assert error(ours) < 5e-6


def test_adamw_follows_a_schedule_from_step_zero():
    generator = torch.Generator().manual_seed(1)
    params = model_tree(generator)
    schedule = warmup_cosine(1e-2, 1e-3, warmup_steps=3, decay_steps=10)
    reference, leaves = torch_adamw(params, 0.0, (0.9, 0.999), 1e-8, 0.01, masked=False)
    optimizer = adamw(schedule)
    state = optimizer.init(params)
    for step in range(12):
        grads = like(params, generator)
        for leaf, grad in zip(leaves, tree_leaves(grads), strict=True):
            leaf.grad = grad.clone()
        reference.param_groups[0]["lr"] = schedule(step)
        reference.step()
        updates, state = optimizer.update(grads, state, params)
        if step == 0:  # the warm-up starts at lr 0: the first update is zero
            assert all(torch.all(u == 0) for u in tree_leaves(updates))
        params = apply_updates(params, updates)
    for a, b in zip(tree_leaves(params), leaves, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_the_learning_rate_schedule_sees_the_count_of_updates_before():
    seen = []
    transform = scale_by_learning_rate(lambda count: seen.append(count) or 0.5)
    state = transform.init({"w": torch.ones(2)})
    for _ in range(3):
        updates, state = transform.update({"w": torch.ones(2)}, state)
    assert seen == [0, 1, 2] and state == ScaleByLearningRateState(3)
    assert torch.equal(updates["w"], torch.full((2,), -0.5))


def test_adam_state_counts_updates_and_keeps_moments_shaped_like_the_params():
    params = model_tree(torch.Generator().manual_seed(2))
    transform = scale_by_adam()
    state = transform.init(params)
    assert state.count == 0 and tree_flatten(state.mu)[1] == tree_flatten(params)[1]
    grads = like(params, torch.Generator().manual_seed(3))
    updates, state = transform.update(grads, state)
    assert isinstance(state, ScaleByAdamState) and state.count == 1
    # After one step from zero moments, m^ = g and v^ = g^2, so u = g / (|g| + eps) ~ sign(g).
    for u, g in zip(tree_leaves(updates), tree_leaves(grads), strict=True):
        torch.testing.assert_close(u, g / (g.abs() + 1e-8))


# --- chain, clipping, purity, errors ---


def test_chain_applies_in_order_and_keeps_a_tuple_of_states():
    params = {"w": torch.tensor([1.0, -2.0])}
    double = scale_by_learning_rate(2.0)  # multiplies by -2: doubles the norm
    clip = clip_by_global_norm(1.0)
    for first, second, norm in [(double, clip, 1.0), (clip, double, 2.0)]:
        chained = chain(first, second)
        state = chained.init(params)
        assert len(state) == 2 and state[0] == first.init(params) and state[1] == second.init(params)
        updates, state = chained.update({"w": torch.tensor([3.0, 4.0])}, state)  # norm 5
        torch.testing.assert_close(global_norm(updates), torch.tensor(norm), atol=1e-5, rtol=0)
        assert ScaleByLearningRateState(1) in state and EmptyState() in state


def test_chain_rejects_a_state_of_the_wrong_length():
    with pytest.raises(ValueError, match="chain: a state of 1 parts for 2"):
        chain(scale_by_adam(), scale_by_learning_rate(1.0)).update({"w": torch.ones(1)}, (EmptyState(),))


@pytest.mark.parametrize("scale, clipped", [(10.0, True), (0.01, False)])
def test_clip_by_global_norm_matches_torch(scale, clipped):
    grads = like(model_tree(torch.Generator().manual_seed(4)), torch.Generator().manual_seed(5), scale)
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in tree_leaves(grads)]
    for p, g in zip(theirs, tree_leaves(grads), strict=True):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0, foreach=True)
    ours, _ = clip_by_global_norm(1.0).update(grads, EmptyState())
    torch.testing.assert_close(global_norm(grads), norm)
    assert (norm > 1.0) == clipped
    for a, b, g in zip(tree_leaves(ours), theirs, tree_leaves(grads), strict=True):
        torch.testing.assert_close(a, b.grad, atol=1e-7, rtol=1e-6)
        assert torch.equal(a, g) != clipped


def test_updates_leave_every_input_untouched_and_return_new_tensors():
    generator = torch.Generator().manual_seed(6)
    params = model_tree(generator)
    optimizer = chain(clip_by_global_norm(0.1), adamw(1e-2, weight_decay=0.1, mask=decay_matrices))
    state = optimizer.init(params)
    for _ in range(2):  # the second update starts from non-zero moments
        grads = like(params, generator)
        inputs = (grads, state, params)
        before = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, inputs)
        updates, new_state = optimizer.update(grads, state, params)
        new_params = apply_updates(params, updates)
        for a, b in zip(tree_leaves(inputs), tree_leaves(before), strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        old = {x.data_ptr() for x in tree_leaves(inputs) if isinstance(x, torch.Tensor)}
        new = [x for x in tree_leaves((updates, new_state, new_params)) if isinstance(x, torch.Tensor)]
        assert not any(x.data_ptr() in old for x in new)
        params, state = new_params, new_state


def test_add_decayed_weights_needs_params_and_a_bool_mask_shaped_like_them():
    params = {"w": torch.ones(2, 2), "g": torch.ones(2)}
    updates = tree_map(torch.zeros_like, params)
    with pytest.raises(ValueError, match="needs the params"):
        add_decayed_weights(0.1).update(updates, EmptyState())
    with pytest.raises(ValueError, match="mask does not have the structure"):
        add_decayed_weights(0.1, {"w": True}).update(updates, EmptyState(), params)
    with pytest.raises(TypeError, match="Python bools"):
        add_decayed_weights(0.1, {"w": 1, "g": 0}).update(updates, EmptyState(), params)
    decayed, _ = add_decayed_weights(0.5, {"w": False, "g": True}).update(updates, EmptyState(), params)
    assert decayed["w"] is updates["w"] and torch.equal(decayed["g"], torch.full((2,), 0.5))


def test_decay_matrices_marks_the_leaves_with_two_or_more_axes():
    mask = decay_matrices(model_tree(torch.Generator().manual_seed(7)))
    assert mask["token_embeddings"]["weight"] and mask["layers"][1]["attn"]["q_proj"]["weight"]
    assert not mask["layers"][0]["ln1"]["weight"] and not mask["ln_final"]["weight"]


def test_mismatched_trees_are_rejected():
    params = {"w": torch.ones(3)}
    optimizer = adamw(0.1)
    with pytest.raises(ValueError, match="scale_by_adam: state.mu does not have the structure"):
        optimizer.update({"v": torch.ones(3)}, optimizer.init(params), params)
    with pytest.raises(ValueError, match="apply_updates: updates"):
        apply_updates(params, {"v": torch.ones(3)})


@pytest.mark.parametrize(
    "make", [lambda: scale_by_adam(b1=1.0), lambda: scale_by_adam(eps=-1.0), lambda: add_decayed_weights(-0.1),
             lambda: scale_by_learning_rate(-1.0), lambda: clip_by_global_norm(0.0)]
)
def test_hyper_parameters_are_validated(make):
    with pytest.raises(ValueError):
        make()


def test_optimizer_state_round_trips_through_leaves_named_by_key_path():
    generator = torch.Generator().manual_seed(8)
    params = model_tree(generator)
    optimizer = chain(clip_by_global_norm(1.0), adamw(warmup_cosine(1e-2, 1e-3, 2, 10), mask=decay_matrices))
    state = optimizer.init(params)
    for _ in range(3):
        updates, state = optimizer.update(like(params, generator), state, params)
        params = apply_updates(params, updates)

    flat = tree_leaves_by_path(state)
    buffer = io.BytesIO()
    torch.save(flat, buffer)  # plain dict of str -> tensor | int: loads with weights_only=True
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert list(loaded) == list(tree_leaves_by_path(optimizer.init(params)))
    restored = tree_from_leaves_by_path(optimizer.init(params), loaded)

    assert type(restored[1][0]) is ScaleByAdamState and restored[1][0].count == 3 and restored[1][2].count == 3
    assert "[1][0].mu['layers'][1]['ln1']['weight']" in loaded
    for a, b in zip(tree_leaves(restored), tree_leaves(state), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else (a == b and type(a) is type(b))
    grads = like(params, generator)
    after_restored, _ = optimizer.update(grads, restored, params)
    after_original, _ = optimizer.update(grads, state, params)
    for a, b in zip(tree_leaves(after_restored), tree_leaves(after_original), strict=True):
        assert torch.equal(a, b)


# --- the handout's Algorithm 1 (float64), and exactly how ours differs from it ---


def handout_step(theta, m, v, g, t, lr, b1, b2, eps, wd):
    """Algorithm 1 of the handout, literally: bias corrections in alpha_t, decay after the step."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    alpha_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    theta = theta - alpha_t * m / (torch.sqrt(v) + eps)
    theta = theta - lr * wd * theta
    return theta, m, v


def handout_and_ours(steps, lr, b1, b2, eps, wd, handout_eps):
    """Both over the same gradients (not depending on theta); returns the thetas and Adam
    directions u_t of every step."""
    generator = torch.Generator().manual_seed(9)
    theta = torch.randn(16, generator=generator, dtype=torch.float64)
    ours, m, v = theta.clone(), torch.zeros_like(theta), torch.zeros_like(theta)
    adam, optimizer = scale_by_adam(b1, b2, eps), adamw(lr, b1, b2, eps, wd)
    adam_state, state = adam.init(ours), optimizer.init(ours)
    history = []
    for t in range(1, steps + 1):
        g = torch.randn(16, generator=generator, dtype=torch.float64) * 1e-3
        theta, m, v = handout_step(theta, m, v, g, t, lr, b1, b2, handout_eps(t), wd)
        u, adam_state = adam.update(g, adam_state)
        updates, state = optimizer.update(g, state, ours)
        ours = apply_updates(ours, updates)
        history.append((theta, ours, u))
    return history


def test_without_decay_our_eps_is_the_handouts_eps_times_sqrt_of_one_minus_beta2_to_the_t():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-3  # a large eps against gradients ~1e-3: it matters
    matched = handout_and_ours(50, lr, b1, b2, eps, 0.0, lambda t: eps * math.sqrt(1 - b2**t))
    for theta, ours, _ in matched:
        torch.testing.assert_close(ours, theta, atol=1e-14, rtol=1e-13)
    same_eps = handout_and_ours(50, lr, b1, b2, eps, 0.0, lambda t: eps)
    assert (same_eps[-1][0] - same_eps[-1][1]).abs().max() > 1e-3  # placing eps differently is not a no-op


def test_with_decay_the_gap_to_the_handout_is_lr_squared_wd_times_u_per_step():
    lr, b1, b2, wd = 1e-2, 0.9, 0.95, 0.1
    history = handout_and_ours(50, lr, b1, b2, 0.0, wd, lambda t: 0.0)
    gap = torch.zeros(16, dtype=torch.float64)
    for theta, ours, u in history:
        # From one theta_{t-1} the handout lands lr^2 wd u_t above us; earlier gaps decay by (1 - lr wd).
        gap = (1 - lr * wd) * gap + lr**2 * wd * u
        torch.testing.assert_close(theta - ours, gap, atol=1e-15, rtol=1e-9)
    assert gap.abs().max() > 10 * lr**2 * wd  # it accumulates: the check is not of two zeros
