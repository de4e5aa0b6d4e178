"""The training step of K variants at once: (stacked state, stacked batch) -> (state, metrics).

    grads, loss = vmap(grad_and_value(loss_fn))(params, x, y)    # params, x, y batched on axis 0
    updates, opt_state = stacked_optimizer.update(grads, opt_state, params)
    params = apply_updates(params, updates)

`torch.func.vmap` turns the pure loss of one model (core/train_step.py's loss_fn) into the loss of
K models, each on its own batch: every matmul becomes one batched matmul over the variants. The
optimizer is a stacked one (core/optim/stacked_*.py), each variant with its own hyperparameters.

A variant whose loss or gradient norm is not finite is masked out, for good: its gradients and
updates are zeroed before they touch its moments and parameters, so its slice keeps the last
state it reached, as the sequential trainer keeps a diverged run's last state, while the others
go on unchanged (vmap computes each variant apart: a NaN in one slice stays in that slice).

The step always donates (core/optim/base.py): moments and parameters are updated in place. Like
the sequential donated step it reads one flag from the device per step: whether every variant
stepped.
"""

from collections.abc import Callable
from functools import partial

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from core.config import ModelConfig
from core.optim import GradientTransformation, apply_updates
from core.optim.stacked import stacked_global_norm
from core.stacked_train_state import StackedTrainState
from core.train_step import Autocast, loss_fn
from core.tree import Tree, tree_flatten, tree_unflatten

StackedBatch = tuple[Int[Tensor, "variants batch seq"], Int[Tensor, "variants batch seq"]]
StackedMetrics = dict[str, Tensor]  # loss, grad_norm: (K,) float; applied: (K,) bool
StackedTrainStep = Callable[[StackedTrainState, StackedBatch], tuple[StackedTrainState, StackedMetrics]]
StackedLoss = Callable[[Tree, Tensor, Tensor], Float[Tensor, " variants"]]


def make_stacked_grad_and_value(
    config: ModelConfig, autocast: Autocast = None, compile: bool = False
) -> Callable[[Tree, Tensor, Tensor], tuple[Tree, Float[Tensor, " variants"]]]:
    """(stacked params, x, y: (K, batch, seq)) -> (stacked grads, (K,) losses). `compile` wraps
    torch.compile around the vmapped function (outside it, as torch.func requires)."""
    batched = torch.func.vmap(torch.func.grad_and_value(partial(loss_fn, config=config, autocast=autocast)))
    return torch.compile(batched) if compile else batched


def make_stacked_loss(
    config: ModelConfig, autocast: Autocast = None, *, shared_batch: bool = False
) -> StackedLoss:
    """(stacked params, x, y) -> (K,) losses, for evaluation: each variant on its own batch
    (K, batch, seq), or with `shared_batch` all on one (batch, seq), e.g. the validation windows."""
    in_dims = (0, None, None) if shared_batch else (0, 0, 0)
    return torch.func.vmap(partial(loss_fn, config=config, autocast=autocast), in_dims=in_dims)


def make_stacked_train_step(
    config: ModelConfig, optimizer: GradientTransformation, *, autocast: Autocast = None, compile: bool = False
) -> StackedTrainStep:
    """The step of the stacked `optimizer` (e.g. chain(stacked_clip_by_global_norm(max_norms),
    stacked_adamw(...))) on K models of shape `config`. Metrics per variant: the loss, the
    gradient norm before clipping, and whether the step was applied to it."""
    grad_and_value = make_stacked_grad_and_value(config, autocast, compile)

    def train_step(state: StackedTrainState, batch: StackedBatch) -> tuple[StackedTrainState, StackedMetrics]:
        x, y = batch
        grads, loss = grad_and_value(state.params, x, y)
        grad_norm = stacked_global_norm(grads)  # before the optimizer, which overwrites grads
        applied = state.active & torch.isfinite(loss) & torch.isfinite(grad_norm)
        everyone = bool(applied.all())
        if not everyone:
            grads = zero_masked(grads, applied)  # a NaN gradient would poison the moments
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, donate=True)
        if not everyone:
            updates = zero_masked(updates, applied)  # momentum alone would still move them
        params = apply_updates(state.params, updates, donate=True)
        metrics = {"loss": loss.detach(), "grad_norm": grad_norm, "applied": applied}
        return state.replace(params=params, opt_state=opt_state, active=applied, step=state.step + 1), metrics

    return train_step


def zero_masked(tree: Tree, keep: Bool[Tensor, " variants"]) -> Tree:
    """`tree` with the slices of the variants not in `keep` set to 0, in place (NaN included)."""
    leaves, spec = tree_flatten(tree)
    dropped = ~keep
    for leaf in leaves:
        leaf.masked_fill_(dropped.view(-1, *([1] * (leaf.ndim - 1))), 0.0)
    return tree_unflatten(leaves, spec)
