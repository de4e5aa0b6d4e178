"""The pure training step: (state, batch) -> (state, metrics).

    grads, loss = grad_and_value(loss_fn)(state.params, x, y)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = apply_updates(state.params, updates)

The learning rate and step count live in the optimizer's state, so the step takes nothing else.
Nothing is mutated, so a caller can keep the previous state around for free, e.g. as the last
known-good state to checkpoint if the next step diverges.
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
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict[str, Tensor]]]


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
) -> TrainStep:
    """The step function of `optimizer` (e.g. chain(clip_by_global_norm(1.0), adamw(schedule)))
    on the model `config`. Its metrics are the loss and the gradient norm before clipping, as
    tensors on the device: reading them is the caller's choice of when to sync."""
    grad_and_value = make_grad_and_value(config, grad_mode, autocast, compile)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Tensor]]:
        x, y = batch
        grads, loss = grad_and_value(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": global_norm(grads)}
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return train_step


def _autocast(autocast: Autocast) -> contextlib.AbstractContextManager:
    if autocast is None:
        return contextlib.nullcontext()
    device_type, dtype = autocast
    return torch.autocast(device_type, dtype=dtype)
