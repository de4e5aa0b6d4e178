"""The training step over K stacked variants (`make_train_step(..., variants=True)`): a variant masked
out keeps its whole state as it was, parameters and optimizer moments alike, while the others step
as they would without it; the optimizer's (K,) hyperparameters give each variant its own update."""

import pytest
import torch

from core.config import ModelConfig
from core.optim import adamw, chain, clip_by_global_norm, decay_matrices
from core.schedule import stack_schedules, warmup_cosine
from core.stack import stack_trees, variant_values
from core.train_state import init_train_state, variant_state
from core.train_step import make_train_step
from core.tree import tree_leaves, tree_leaves_by_path
from params.init import init_params

CONFIG = ModelConfig(vocab_size=64, context_length=8, d_model=16, num_layers=1, num_heads=2)
LRS = [1e-2, 3e-3, 5e-3]


def optimizer_for(indices: list[int]):
    values = [LRS[k] for k in indices]
    schedule = stack_schedules([warmup_cosine(lr, lr / 10, 1, 20) for lr in values])
    adam = adamw(schedule, b1=variant_values([[0.9, 0.8, 0.85][k] for k in indices]), b2=0.99, weight_decay=variant_values([0.1] * len(indices)),
                 mask=decay_matrices)
    return chain(clip_by_global_norm(variant_values([1.0] * len(indices))), adam)


def batches(step: int, variants: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, CONFIG.vocab_size, (variants, 4, CONFIG.context_length + 1), generator=torch.Generator().manual_seed(step))
    return tokens[..., :-1], tokens[..., 1:]


def fresh_state(optimizer, seeds: list[int]):
    params = stack_trees([init_params(CONFIG, torch.Generator().manual_seed(seed)) for seed in seeds])
    return init_train_state(params, optimizer, rng=seeds)


def tensors(state, k: int) -> dict[str, torch.Tensor]:
    one = variant_state(state, k)
    found = {f"params{name}": leaf for name, leaf in tree_leaves_by_path(one.params).items()}
    found |= {f"opt{name}": leaf for name, leaf in tree_leaves_by_path(one.opt_state).items() if isinstance(leaf, torch.Tensor)}
    return found


@pytest.mark.parametrize("donate", [True, False])
def test_a_variant_that_diverges_keeps_its_whole_state_while_the_others_step_on(donate):
    optimizer = optimizer_for([0, 1, 2])
    step = make_train_step(CONFIG, optimizer, donate=donate, variants=True)
    state = fresh_state(optimizer, [0, 1, 2])
    for n in range(3):
        state, metrics = step(state, batches(n, 3))
        assert metrics["applied"].tolist() == [True, True, True]
    # Weights so large that variant 1's logits overflow: its loss is not finite from here on.
    head = state.params["lm_head"]["weight"]
    head[1] = 1e38
    before = {name: leaf.clone() for name, leaf in tensors(state, 1).items()}
    others = [variant_state(state, k) for k in (0, 2)]
    for n in range(3, 6):
        state, metrics = step(state, batches(n, 3))
        assert metrics["applied"].tolist() == [True, False, True] and state.active.tolist() == [True, False, True]
        after = tensors(state, 1)
        for name, leaf in before.items():
            assert torch.equal(after[name], leaf), name  # the moments too: they do not decay

    # The other two stepped as a group of two without it.
    pair = optimizer_for([0, 2])
    alone = init_train_state(stack_trees([s.params for s in others]), pair, rng=[0, 2])
    alone = alone.replace(opt_state=stack_trees([s.opt_state for s in others]), step=others[0].step)
    pair_step = make_train_step(CONFIG, pair, donate=donate, variants=True)
    for n in range(3, 6):
        x, y = batches(n, 3)
        alone, _ = pair_step(alone, (x[[0, 2]], y[[0, 2]]))
    for k, theirs in zip((0, 2), (variant_state(alone, 0), variant_state(alone, 1)), strict=True):
        for ours, expected in zip(tree_leaves(variant_state(state, k).params), tree_leaves(theirs.params), strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_a_variant_masked_out_by_the_loop_is_left_as_it_is():
    optimizer = optimizer_for([0, 1, 2])
    step = make_train_step(CONFIG, optimizer, donate=True, variants=True)
    state, _ = step(fresh_state(optimizer, [0, 1, 2]), batches(0, 3))
    state = state.replace(active=torch.tensor([True, True, False]))  # as the loop masks a variant stopped at a boundary
    before = {name: leaf.clone() for name, leaf in tensors(state, 2).items()}
    state, metrics = step(state, batches(1, 3))
    assert metrics["applied"].tolist() == [True, True, False]
    assert all(torch.equal(tensors(state, 2)[name], leaf) for name, leaf in before.items())
    initial = init_params(CONFIG, torch.Generator().manual_seed(0))
    assert not torch.equal(variant_state(state, 0).params["lm_head"]["weight"], initial["lm_head"]["weight"])  # the others step


def test_variants_refuse_what_the_stacked_step_does_not_do():
    with pytest.raises(ValueError, match="variants"):
        make_train_step(CONFIG, optimizer_for([0, 1]), variants=True, accumulate=2)
