"""The pure training step: (state, batch) -> (state, metrics).

    grads, loss = grad_and_value(loss_fn)(state.params, x, y)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = apply_updates(state.params, updates)

The learning rate and step count live in the optimizer's state, so the step takes nothing else.
By default nothing is mutated, so a caller can keep the previous state around for free. With
`donate=True` (what the trainer uses) the step reuses the incoming state's storage: the optimizer
moments and the parameters are updated in place (core/optim/base.py) and no parameter-sized buffers
are allocated beyond the gradients and one temporary. To keep a donated state valid, the step first
checks that the loss and gradient norm are finite and applies nothing when they are not.

Gradient accumulation (`accumulate=K`): the batch's rows are K micro-batches in order; their
gradients are summed and averaged, so the update equals one step on the whole batch. Data
parallelism plugs in as a `GradSync` (pipelines/training/distributed/grad_sync.py): it averages the summed
gradients and losses across processes, starting while the last micro-batch's backward still runs
when the gradients come from autograd (a hook per leaf), after it otherwise.

With `gns=True` the step also measures what the gradient noise scale needs (core/gns.py): the
mean squared norm of this process's micro-batch gradients, beside the norm of their average.

K variants at once (`variants=True`, a vectorised sweep): the state holds K stacked models
(core/train_state.py) and the batch is (K, batch, seq), variant k training on its own rows.
`torch.func.vmap` turns the pure loss of one model into the loss of K, so every matmul becomes one
batched matmul over the variants, and the optimizer is the ordinary one given (K,) hyperparameters
(core/optim/foreach.py). Metrics are per variant. A variant whose loss or gradient norm is not
finite, or that is no longer `state.active`, is masked out for good: its parameters and optimizer
state stay exactly as they were (its slices are set back after the update; the shared Python step
counts still advance), while the others go on unchanged (vmap and the per-variant optimizer
compute each variant apart: a NaN in one slice stays in that slice).
"""

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from core.config import ModelConfig
from core.gns import squared_norm
from core.model import KERNELS, forward
from core.optim import GradientTransformation, apply_updates, foreach, global_norm
from core.train_state import TrainState
from core.tree import Tree, tree_flatten, tree_unflatten

# `torch.autograd.grad` or `torch.func.grad_and_value` over the same pure loss; bench/train.py
# times both (eager on the CPU, autograd has mostly been the faster: less dispatch per op).
GradMode = Literal["func", "autograd"]
# e.g. ("cuda", torch.bfloat16): matmuls in bf16, parameters and optimizer state stay float32.
Autocast = tuple[str, torch.dtype] | None
Batch = tuple[Tensor, Tensor]  # (batch, seq) inputs and targets; with variants, (K, batch, seq)
Metrics = dict[str, Tensor | bool]  # with variants, (K,) tensors
Loss = Callable[[Tree, Tensor, Tensor], Tensor]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
GradHook = Callable[[int, Tensor], None]  # (leaf index, that leaf's gradient) during backward


@runtime_checkable
class GradSync(Protocol):
    """Averages gradient leaves and the loss over data-parallel processes."""

    def start(self, partial: list[Tensor] | None) -> GradHook:
        """Before the last micro-batch's backward, given the sum of the earlier micro-batches'
        gradients (None if there were none): the hook to call with each leaf's gradient."""
        ...

    def finish(self, grads: list[Tensor], loss: Tensor, micro_batches: int) -> tuple[list[Tensor], Tensor]:
        """This process's gradients and loss summed over its micro-batches -> the means over every
        process and micro-batch."""
        ...


def loss_fn(
    params: Tree, x: Int[Tensor, "batch seq"], y: Int[Tensor, "batch seq"], config: ModelConfig, autocast: Autocast = None
) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy of the model on one batch."""
    with _autocast(autocast):
        logits = forward(params, x, config)
    return KERNELS[config.kernels].cross_entropy(logits, y)


def make_loss(config: ModelConfig, autocast: Autocast = None, *, variants: bool = False, shared_batch: bool = False) -> Loss:
    """(params, x, y) -> the loss, for evaluation; with `variants`, (stacked params, x, y) -> (K,)
    losses, each variant on its own batch (K, batch, seq), or with `shared_batch` all on one
    (batch, seq), e.g. the validation windows."""
    loss = partial(loss_fn, config=config, autocast=autocast)
    if not variants:
        return loss
    return torch.func.vmap(loss, in_dims=(0, None, None) if shared_batch else 0)


def make_grad_and_value(
    config: ModelConfig, grad_mode: GradMode = "autograd", autocast: Autocast = None, compile: bool = False
) -> Callable[[Tree, Tensor, Tensor], tuple[Tree, Tensor]]:
    """(params, x, y) -> (grads shaped like params, loss). `compile` runs torch.compile over the
    loss (autograd: AOTAutograd compiles its backward too) or the whole grad transform (func)."""
    loss = make_loss(config, autocast)
    if grad_mode == "func":
        grad_and_value = torch.func.grad_and_value(loss)
        return torch.compile(grad_and_value) if compile else grad_and_value
    if grad_mode != "autograd":
        raise ValueError(f"grad_mode must be 'func' or 'autograd', got {grad_mode!r}")
    if compile:
        loss = torch.compile(loss)

    def autograd_grad_and_value(params: Tree, x: Tensor, y: Tensor, hook: GradHook | None = None) -> tuple[Tree, Tensor]:
        # Fresh leaves that require grad: the caller's tensors are left untouched. A leaf the loss
        # does not use gets zeros, as torch.func gives it.
        leaves, spec = tree_flatten(params)
        leaves = [leaf.detach().requires_grad_() for leaf in leaves]
        if hook is not None:
            for index, leaf in enumerate(leaves):
                leaf.register_hook(lambda grad, index=index: hook(index, grad))
        value = loss(tree_unflatten(leaves, spec), x, y)
        grads = torch.autograd.grad(value, leaves, allow_unused=True, materialize_grads=True)
        return tree_unflatten(list(grads), spec), value.detach()

    return autograd_grad_and_value


def make_train_step(
    config: ModelConfig,
    optimizer: GradientTransformation,
    *,
    grad_mode: GradMode = "autograd",
    autocast: Autocast = None,
    compile: bool = False,
    donate: bool = False,
    accumulate: int = 1,
    sync: GradSync | None = None,
    gns: bool = False,
    variants: bool = False,
) -> TrainStep:
    """The step function of `optimizer` (e.g. chain(clip_by_global_norm(1.0), adamw(schedule)))
    on the model `config`. Its metrics are the loss and the gradient norm before clipping, as
    tensors on the device, and `applied`; with `gns`, also `micro_grad_sq`: the mean over this
    process's micro-batches of their gradients' squared norms (grad_norm² is the big batch's).

    Without `donate`, the step never reads them (the caller chooses when to sync) and `applied` is
    True. With `donate`, the incoming state is updated in place, so the step reads one flag from
    the device first: a step whose loss or gradient norm is not finite returns the state untouched
    with `applied` False. With a `sync`, loss and gradients are the means over all processes, so
    every process takes the same decision.

    With `variants`, K stacked models step at once (module docstring): the metrics are (K,)
    tensors, `applied` among them, and the step reads one flag per step, whether every variant
    stepped. Clipping must then be per variant (a (K,) max_norm), or one variant's NaN would reach
    the others through the global norm. One process, one micro-batch, no `gns`.

    `compile` with one process, one micro-batch and no `gns` compiles the whole step (loss,
    torch.func gradients, optimizer: bench/train.py measures it the fastest compiled variant) with
    `make_compiled_step`; otherwise it compiles the loss and its gradients."""
    if variants and (sync is not None or accumulate != 1 or gns):
        raise ValueError("make_train_step: variants train on one process with one micro-batch and no gns")
    if compile and sync is None and accumulate == 1 and not gns and not variants:
        return make_compiled_step(config, optimizer, autocast)
    grads_and_loss = make_grads_and_loss(config, grad_mode, autocast, compile, accumulate, sync, gns, variants)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        grads, loss, micro_grad_sq = grads_and_loss(state.params, batch)
        grad_norm = global_norm(grads, per_variant=variants)  # before a donated update overwrites grads
        measured = {"loss": loss, "grad_norm": grad_norm} | ({"micro_grad_sq": micro_grad_sq} if gns else {})
        if variants:
            applied = state.active & torch.isfinite(loss) & torch.isfinite(grad_norm)
            frozen = None if bool(applied.all()) else _slices(~applied, (state.params, state.opt_state))
        elif donate and not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            return state, {**measured, "applied": False}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, donate=donate)
        params = apply_updates(state.params, updates, donate=donate)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        if not variants:
            return new_state, {**measured, "applied": True}
        if frozen is not None:
            _set_slices(frozen, (params, opt_state))
        return new_state.replace(active=applied), {**measured, "applied": applied}

    return train_step


def _slices(masked: Bool[Tensor, " variants"], tree: Tree) -> tuple[Tensor, list[Tensor | None]]:
    """The masked variants' indices and a copy of their slice of each tensor leaf of `tree`."""
    indices = masked.nonzero().squeeze(1)
    return indices, [leaf.index_select(0, indices) if isinstance(leaf, Tensor) else None for leaf in tree_flatten(tree)[0]]


def _set_slices(frozen: tuple[Tensor, list[Tensor | None]], tree: Tree) -> None:
    """Write the slices `_slices` kept back into `tree` (of the same structure), in place."""
    indices, saved = frozen
    for leaf, old in zip(tree_flatten(tree)[0], saved, strict=True):
        if old is not None:
            leaf.index_copy_(0, indices, old)


def make_compiled_step(config: ModelConfig, optimizer: GradientTransformation, autocast: Autocast = None) -> TrainStep:
    """The whole step under one torch.compile: loss, gradients (torch.func: dynamo traces it, not
    torch.autograd.grad) and the optimizer's update. The compiled function is pure and returns the
    new state beside the old; the step keeps the new one only when the loss and gradient norm are
    finite (`applied`), so a non-finite step changes nothing, as with `donate`. The step counts are
    Python ints that dynamo makes symbolic after their first change, and the learning rate is
    computed from them inside the graph: the step compiles on its first call, on its second, and
    once more for each branch of the schedule (warm-up, decay, after it), never once per step."""

    def whole(params: Tree, opt_state, x: Tensor, y: Tensor):
        grads, loss = torch.func.grad_and_value(loss_fn)(params, x, y, config, autocast)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, loss, global_norm(grads)

    compiled = torch.compile(whole)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        params, opt_state, loss, grad_norm = compiled(state.params, state.opt_state, *batch)
        if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            return state, {"loss": loss, "grad_norm": grad_norm, "applied": False}
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "applied": True}

    return train_step


def make_grads_and_loss(
    config: ModelConfig,
    grad_mode: GradMode,
    autocast: Autocast,
    compile: bool,
    accumulate: int = 1,
    sync: GradSync | None = None,
    gns: bool = False,
    variants: bool = False,
) -> Callable[[Tree, Batch], tuple[Tree, Tensor, Tensor | None]]:
    """(params, batch) -> (mean gradients, mean loss, micro_grad_sq) over the batch's `accumulate`
    micro-batches and, with a `sync`, over every process. micro_grad_sq, with `gns` (else None),
    is the mean of the micro-batch gradients' squared norms on this process, before any sync.
    With `variants`, stacked params and batches give stacked gradients and (K,) losses (vmap over
    torch.func's gradients; `compile` wraps torch.compile around the vmap, as torch.func needs)."""
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    if not variants:
        grad_and_value = make_grad_and_value(config, grad_mode, autocast, compile)
    else:
        grad_and_value = torch.func.vmap(make_grad_and_value(config, "func", autocast))
        grad_and_value = torch.compile(grad_and_value) if compile else grad_and_value
    hooks = sync is not None and grad_mode == "autograd"  # torch.func never calls tensor hooks

    def grads_and_loss(params: Tree, batch: Batch) -> tuple[Tree, Tensor, Tensor | None]:
        x, y = batch
        if len(x) % accumulate:
            raise ValueError(f"a batch of {len(x)} rows does not split into {accumulate} micro-batches")
        total: list[Tensor] | None = None
        loss = torch.zeros((), device=x.device)
        micro_grad_sq = torch.zeros((), device=x.device) if gns else None
        for index, (micro_x, micro_y) in enumerate(zip(x.chunk(accumulate), y.chunk(accumulate), strict=True)):
            last = index == accumulate - 1
            hook = {"hook": sync.start(total)} if hooks and last else {}
            grads, micro_loss = grad_and_value(params, micro_x, micro_y, **hook)
            leaves, spec = tree_flatten(grads)
            if micro_grad_sq is not None:
                micro_grad_sq = micro_grad_sq + squared_norm(leaves) / accumulate
            total = leaves if total is None else foreach.add(total, leaves)
            loss = loss + micro_loss
        if sync is not None:
            total, loss = sync.finish(total, loss, accumulate)
        elif accumulate > 1:
            total, loss = foreach.div(total, accumulate), loss / accumulate
        return tree_unflatten(list(total), spec), loss, micro_grad_sq

    return grads_and_loss


def _autocast(autocast: Autocast) -> contextlib.AbstractContextManager:
    if autocast is None:
        return contextlib.nullcontext()
    device_type, dtype = autocast
    return torch.autocast(device_type, dtype=dtype)
