"""core.optim's Muon and partition: Newton-Schulz and the Muon step against references written out
literally here in float64, the routing of partition, muon_labels on the model's parameters,
donation, checkpoints of a partitioned optimizer, and the trainer's optim.name = "muon"."""

import pytest
import torch

from core.config import ModelConfig
from core.optim import (
    EmptyState,
    GradientTransformation,
    PartitionState,
    adamw,
    apply_updates,
    chain,
    clip_by_global_norm,
    decay_matrices,
    muon,
    muon_labels,
    newton_schulz,
    partition,
    scale_by_muon,
)
from core.train_state import init_train_state
from core.tree import tree_leaves_by_path, tree_map
from params.init import init_params
from params.tree import flatten
from pipelines.training.storage.checkpoint import load_train_state, read_train_state, save_train_state
from pipelines.training.config.config import resolve_config
from pipelines.training.config.optimizer import make_optimizer, make_schedule

A, B, C = 3.4445, -4.7750, 2.0315
SHAPES = {"tall": (12, 5), "wide": (5, 12), "square": (7, 7)}
CONFIG = ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=2, num_heads=2)


def reference_newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Keller Jordan's zeropower_via_newtonschulz5, one matrix, float64, plain matmuls."""
    x = g.double()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (torch.sqrt((x * x).sum()) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    return x.T if transposed else x


def reference_muon(params, grads_per_step, lr, momentum, nesterov, weight_decay=0.0):
    """Muon over several steps, leaf by leaf: m = mu m + g; d = g + mu m (Nesterov) or m;
    u = NS(d) max(1, rows/cols)^0.5; theta <- theta - lr (u + wd theta)."""
    params = [p.double().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            buffers[i] = momentum * buffers[i] + g.double()
            direction = g.double() + momentum * buffers[i] if nesterov else buffers[i]
            rows, cols = direction.shape
            u = reference_newton_schulz(direction) * max(1.0, rows / cols) ** 0.5
            params[i] = params[i] - lr * (u + weight_decay * params[i])
    return params


def randn(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("kind", SHAPES)
def test_newton_schulz_matches_the_literal_reference(kind):
    g = randn(SHAPES[kind], seed=1)
    torch.testing.assert_close(newton_schulz(g, dtype=torch.float64), reference_newton_schulz(g), rtol=0, atol=1e-12)
    # The CPU default is float32, returned in the input's dtype.
    out = newton_schulz(g.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_newton_schulz(g), rtol=0, atol=1e-5)


def test_newton_schulz_of_a_batch_is_that_of_each_matrix():
    batch = randn((3, 6, 4), seed=2)
    expected = torch.stack([reference_newton_schulz(m) for m in batch])
    torch.testing.assert_close(newton_schulz(batch, dtype=torch.float64), expected, rtol=0, atol=1e-12)


def test_newton_schulz_in_bfloat16_stays_near_the_float64_result():
    g = randn((16, 32), seed=3)
    out = newton_schulz(g.float(), dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    assert (out.double() - reference_newton_schulz(g)).abs().max() < 0.1  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_the_literal_reference_over_several_steps(nesterov):
    # two leaves of one shape (batched together) and a tall, a wide and a square one
    shapes = [(7, 7), (12, 5), (5, 12), (7, 7)]
    params = [randn(s, seed=10 + i) for i, s in enumerate(shapes)]
    grads_per_step = [[randn(s, seed=100 * step + i) for i, s in enumerate(shapes)] for step in range(4)]
    optimizer = muon(0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.1, dtype=torch.float64)
    state, ours = optimizer.init(params), params
    for grads in grads_per_step:
        updates, state = optimizer.update(grads, state, ours)
        ours = apply_updates(ours, updates)
    expected = reference_muon(params, grads_per_step, 0.05, 0.9, nesterov, weight_decay=0.1)
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)
    assert state[0].count == 4


def test_muon_refuses_leaves_that_are_not_matrices():
    with pytest.raises(ValueError, match=r"matrices only.*\(4,\)"):
        scale_by_muon().init({"w": torch.zeros(3, 4), "gain": torch.ones(4)})
    state = scale_by_muon().init([torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="matrices only"):
        scale_by_muon().update([torch.zeros(2, 3, 4)], state)
    with pytest.raises(ValueError, match="momentum"):
        scale_by_muon(momentum=1.0)


def muon_names(params) -> set[str]:
    """The state-dict names of the leaves muon_labels sends to Muon."""
    to_muon = tree_map(lambda label: torch.tensor(label == "muon"), muon_labels(params))
    return {name for name, flag in flatten(to_muon).items() if flag}


def _recording(factor: float, seen: list) -> GradientTransformation:
    """Multiplies its updates by `factor` and records the leaves it was given."""

    def update(updates, state, params=None, *, donate=False):
        seen.append((list(updates), params))
        return [u * factor for u in updates], state

    return GradientTransformation(lambda params: EmptyState(), update)


def test_partition_routes_each_leaf_once_to_its_label():
    tree = {"a": torch.ones(2), "b": [torch.ones(3), torch.ones(1, 2)], "c": torch.ones(())}
    labels = {"a": "x", "b": ["y", "x"], "c": "y"}
    seen_x, seen_y = [], []
    optimizer = partition({"x": _recording(2.0, seen_x), "y": _recording(3.0, seen_y)}, labels)
    updates, _ = optimizer.update(tree, optimizer.init(tree), tree)
    assert [u.shape for u in seen_x[0][0]] == [(2,), (1, 2)] and [u.shape for u in seen_y[0][0]] == [(3,), ()]
    assert seen_x[0][1][0] is tree["a"] and seen_y[0][1][1] is tree["c"]  # params routed alike
    expected = {"a": 2 * tree["a"], "b": [3 * tree["b"][0], 2 * tree["b"][1]], "c": 3 * tree["c"]}
    assert tree_leaves_by_path(updates).keys() == tree_leaves_by_path(expected).keys()
    for name, leaf in tree_leaves_by_path(expected).items():
        assert torch.equal(tree_leaves_by_path(updates)[name], leaf)


def test_partition_errors_name_the_problem():
    tree = {"a": torch.ones(2), "b": torch.ones(3)}
    only_x = {"x": _recording(1.0, [])}
    with pytest.raises(ValueError, match=r"no transformation for label\(s\) \['z'\]; known: \['x'\]"):
        partition(only_x, {"a": "x", "b": "z"}).init(tree)
    with pytest.raises(ValueError, match="labels does not have the structure"):
        partition(only_x, {"a": "x"}).init(tree)
    with pytest.raises(TypeError, match="labels must be strings"):
        partition(only_x, {"a": "x", "b": 1}).init(tree)
    with pytest.raises(ValueError, match="at least one"):
        partition({}, {})


@pytest.mark.parametrize("switches", [{}, {"tie_embeddings": True}, {"qk_norm": True, "value_residual": True, "ffn": "relu2"}])
def test_muon_labels_send_the_hidden_matrices_to_muon(switches):
    config = ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=2, num_heads=2, **switches)
    params = init_params(config, torch.Generator().manual_seed(0))
    w = (1, 2) if switches.get("ffn") == "relu2" else (1, 2, 3)
    expected = {f"layers.{i}.attn.{p}_proj.weight" for i in range(2) for p in ("q", "k", "v", "output")}
    expected |= {f"layers.{i}.ffn.w{j}.weight" for i in range(2) for j in w}
    assert muon_names(params) == expected
    # the rest: embeddings, the head when untied, gains (QK-norm's too), the value-residual mix
    adam_names = set(flatten(params)) - expected
    assert {"token_embeddings.weight", "ln_final.weight", "layers.0.ln1.weight"} <= adam_names
    assert ("lm_head.weight" in adam_names) != switches.get("tie_embeddings", False)
    if switches.get("value_residual"):
        assert {"layers.1.attn.value_lambda", "layers.0.attn.q_norm.weight"} <= adam_names


def _muon_and_adamw():
    return chain(
        clip_by_global_norm(1.0),
        partition({"muon": muon(lambda step: 0.02 * (step + 1)),
                   "adam": adamw(lambda step: 1e-3 * (step + 1), weight_decay=0.1, mask=decay_matrices)}, muon_labels),
    )


def _grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    return tree_map(lambda p: torch.randn(p.shape, generator=generator), params)


def test_a_partitioned_optimizer_checkpoints_and_resumes_exactly(tmp_path):
    optimizer = _muon_and_adamw()
    state = init_train_state(init_params(CONFIG, torch.Generator().manual_seed(1)), optimizer, rng=7)
    assert isinstance(state.opt_state[1], PartitionState)
    for step in range(3):
        updates, opt_state = optimizer.update(_grads(state.params, step), state.opt_state, state.params)
        state = state.replace(params=apply_updates(state.params, updates), opt_state=opt_state, step=step + 1)
    save_train_state(tmp_path / "state.pt", state, {"model_config": CONFIG.to_dict(), "tokenizer": None})
    loaded = load_train_state(read_train_state(tmp_path / "state.pt"), CONFIG, _muon_and_adamw())
    saved_leaves, loaded_leaves = tree_leaves_by_path(state.opt_state), tree_leaves_by_path(loaded.opt_state)
    assert saved_leaves.keys() == loaded_leaves.keys()
    assert any(".inner_states['muon'][0].momentum" in name for name in saved_leaves)
    for name, value in saved_leaves.items():
        assert torch.equal(loaded_leaves[name], value) if isinstance(value, torch.Tensor) else loaded_leaves[name] == value
    # one more step from either gives the same parameters
    grads = _grads(state.params, 9)
    after = [apply_updates(s.params, optimizer.update(grads, s.opt_state, s.params)[0]) for s in (state, loaded)]
    for name, tensor in flatten(after[0]).items():
        assert torch.equal(flatten(after[1])[name], tensor)
    with pytest.raises(ValueError, match="optimizer state does not match"):
        load_train_state(read_train_state(tmp_path / "state.pt"), CONFIG, chain(clip_by_global_norm(1.0), adamw(1e-3)))


def _clone(tree):
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _assert_trees_equal(x, y):
    xs, ys = tree_leaves_by_path(x), tree_leaves_by_path(y)
    assert xs.keys() == ys.keys()
    for name, value in xs.items():
        assert torch.equal(ys[name], value) if isinstance(value, torch.Tensor) else ys[name] == value, name


def _matrices(params):
    return [p for p in flatten(params).values() if p.ndim == 2]


@pytest.mark.parametrize(("make", "select"), [
    (lambda: scale_by_muon(nesterov=False), _matrices),
    (lambda: muon(0.1, weight_decay=0.1), _matrices),
    (_muon_and_adamw, lambda params: params),
])
def test_donation_gives_the_same_result_and_without_it_nothing_is_modified(make, select):
    optimizer = make()
    params = select(init_params(CONFIG, torch.Generator().manual_seed(3)))
    state = optimizer.init(params)
    for step in range(3):
        grads = _grads(params, step)
        kept = [_clone(x) for x in (grads, state, params)]
        updates, new_state = optimizer.update(grads, state, params)
        for before, now in zip(kept, (grads, state, params), strict=True):
            _assert_trees_equal(before, now)  # donate=False: the inputs are untouched
        donated_updates, donated_state = optimizer.update(*[_clone(x) for x in kept], donate=True)
        _assert_trees_equal(updates, donated_updates)
        _assert_trees_equal(new_state, donated_state)
        state, params = new_state, apply_updates(params, updates)


def test_the_trainer_builds_muon_on_matrices_and_adamw_on_the_rest():
    overrides = {"optim.name": "muon", "optim.muon_lr": 0.05, "schedule.lr": 2e-3, "schedule.warmup_steps": 2, "max_steps": 10}
    config = resolve_config("tinystories", "cpu-small", overrides)
    adam_config = resolve_config("tinystories", "cpu-small", {**overrides, "optim.name": "adamw"})
    params = init_params(CONFIG, torch.Generator().manual_seed(4))
    names = sorted(muon_names(params))
    # Expected: AdamW's updates, as the AdamW-only optimizer makes them, for the other leaves; for
    # the matrices, Muon's on the gradients clipped over all leaves (clipping precedes the
    # partition), on the same schedule scaled from schedule.lr to muon_lr.
    ours, adam_only = make_optimizer(config), make_optimizer(adam_config)
    hidden = muon(lambda step: make_schedule(config)(step) * 0.05 / 2e-3)
    states = ours.init(params), adam_only.init(params), hidden.init([flatten(params)[n] for n in names])
    for step in range(3):
        grads = _grads(params, step)
        updates, ours_state = ours.update(grads, states[0], params)
        adam_updates, adam_state = adam_only.update(grads, states[1], params)
        clipped = flatten(clip_by_global_norm(config.optim.max_grad_norm).update(grads, EmptyState())[0])
        matrices = [flatten(params)[n] for n in names]
        muon_updates, hidden_state = hidden.update([clipped[n] for n in names], states[2], matrices)
        expected = {**flatten(adam_updates), **dict(zip(names, muon_updates, strict=True))}
        for name, tensor in flatten(updates).items():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-9, msg=name)
        states = ours_state, adam_state, hidden_state
        params = apply_updates(params, updates)
