"""A variant of a stacked step that stops (its step not finite, or no longer active) keeps its
whole state: parameters and optimizer moments, bit for bit, while the others train on."""

import pytest
import torch

from core.config import ModelConfig
from core.optim import adamw, chain, clip_by_global_norm
from core.stack import stack_trees, unstack_tree
from core.train_state import init_train_state
from core.train_step import make_train_step
from core.tree import tree_leaves
from params.init import init_params

CONFIG = ModelConfig(vocab_size=32, context_length=8, d_model=16, num_layers=1, num_heads=2)
K = 3


def leaves_of(state, k: int) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(unstack_tree((state.params, state.opt_state), k)) if isinstance(leaf, torch.Tensor)]


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, CONFIG.vocab_size, (K, 4, CONFIG.context_length + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[..., :-1], tokens[..., 1:]


@pytest.mark.parametrize("how", ["non-finite", "inactive"])
@pytest.mark.parametrize("donate", [True, False])
def test_a_stopped_variant_keeps_its_parameters_and_moments_while_the_others_train(how, donate):
    params = stack_trees([init_params(CONFIG, torch.Generator().manual_seed(k)) for k in range(K)])
    optimizer = chain(clip_by_global_norm(1.0), adamw(1e-2))
    state = init_train_state(params, optimizer, list(range(K)))
    step = make_train_step(CONFIG, optimizer, donate=donate, variants=K)
    for seed in range(2):  # non-zero moments first: Adam's would decay if the variant kept stepping
        state, metrics = step(state, batch(seed))
    assert bool(metrics["applied"].all())
    if how == "non-finite":
        state.params["ln_final"]["weight"][1, 0] = float("nan")  # variant 1's loss is no longer finite
    else:
        state = state.replace(active=torch.tensor([True, False, True]))
    stopped = [leaf.clone() for leaf in leaves_of(state, 1)]
    others = [[leaf.clone() for leaf in leaves_of(state, k)] for k in (0, 2)]
    for seed in range(2, 5):
        state, metrics = step(state, batch(seed))
        assert metrics["applied"].tolist() == [True, False, True]
    assert all(torch.equal(now, before) or torch.allclose(now, before, rtol=0, atol=0, equal_nan=True)
               for now, before in zip(leaves_of(state, 1), stopped, strict=True))
    for k, before in zip((0, 2), others):
        assert all(torch.isfinite(leaf).all() for leaf in leaves_of(state, k))
        assert not all(torch.equal(now, then) for now, then in zip(leaves_of(state, k), before))
