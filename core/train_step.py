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
"""

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.config import ModelConfig
from core.model import KERNELS, forward
from core.optim import GradientTransformation, apply_updates, global_norm
from core.train_state import TrainState
from core.tree import Tree, tree_flatten, tree_unflatten

# `torch.autograd.grad` or `torch.func.grad_and_value` over the same pure loss; bench/train.py
# times both (eager on the CPU, autograd has mostly been the faster: less dispatch per op).
GradMode = Literal["func", "autograd"]
# e.g. ("cuda", torch.bfloat16): matmuls in bf16, parameters and optimizer state stay float32.
Autocast = tuple[str, torch.dtype] | None
Batch = tuple[Tensor, Tensor]
Metrics = dict[str, Tensor | bool]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def loss_fn(
    params: Tree, x: Int[Tensor, "batch seq"], y: Int[Tensor, "batch seq"], config: ModelConfig, autocast: Autocast = None
) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy of the model on one batch."""
    with _autocast(autocast):
        logits = forward(params, x, config)
    return KERNELS[config.kernels].cross_entropy(logits, y)


def make_grad_and_value(
    config: ModelConfig, grad_mode: GradMode = "autograd", autocast: Autocast = None, compile: bool = False
) -> Callable[[Tree, Tensor, Tensor], tuple[Tree, Tensor]]:
    """(params, x, y) -> (grads shaped like params, loss). `compile` runs torch.compile over the
    loss (autograd: AOTAutograd compiles its backward too) or the whole grad transform (func)."""

    def loss(params: Tree, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(params, x, y, config, autocast)

    if grad_mode == "func":
        grad_and_value = torch.func.grad_and_value(loss)
        return torch.compile(grad_and_value) if compile else grad_and_value
    if grad_mode != "autograd":
        raise ValueError(f"grad_mode must be 'func' or 'autograd', got {grad_mode!r}")
    if compile:
        loss = torch.compile(loss)

    def autograd_grad_and_value(params: Tree, x: Tensor, y: Tensor) -> tuple[Tree, Tensor]:
        # Fresh leaves that require grad: the caller's tensors are left untouched.
        leaves, spec = tree_flatten(params)
        leaves = [leaf.detach().requires_grad_() for leaf in leaves]
        value = loss(tree_unflatten(leaves, spec), x, y)
        grads = torch.autograd.grad(value, leaves)
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
) -> TrainStep:
    """The step function of `optimizer` (e.g. chain(clip_by_global_norm(1.0), adamw(schedule)))
    on the model `config`. Its metrics are the loss and the gradient norm before clipping, as
    tensors on the device, and `applied`.

    Without `donate`, the step never reads them (the caller chooses when to sync) and `applied` is
    True. With `donate`, the incoming state is updated in place, so the step reads one flag from
    the device first: a step whose loss or gradient norm is not finite returns the state untouched
    with `applied` False."""
    grad_and_value = make_grad_and_value(config, grad_mode, autocast, compile)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        x, y = batch
        grads, loss = grad_and_value(state.params, x, y)
        grad_norm = global_norm(grads)  # before the optimizer: a donated update overwrites grads
        if donate and not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            return state, {"loss": loss, "grad_norm": grad_norm, "applied": False}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, donate=donate)
        params = apply_updates(state.params, updates, donate=donate)
        metrics = {"loss": loss, "grad_norm": grad_norm, "applied": True}
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return train_step


def _autocast(autocast: Autocast) -> contextlib.AbstractContextManager:
    if autocast is None:
        return contextlib.nullcontext()
    device_type, dtype = autocast
    return torch.autocast(device_type, dtype=dtype)
