"""The pure training step: (params, opt_state, batch, step) -> (params, opt_state, metrics).

    grads, loss = grad_and_value(loss)(params, x, y)
    grads, norm = clip_by_global_norm(grads, max_norm)
    params, opt_state = adamw_update(grads, opt_state, params, hparams, lr=schedule(step))

Nothing is mutated, so a caller can keep the previous (params, opt_state) around for free, e.g. as
the last known-good state to checkpoint if the next step diverges.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.clip import clip_by_global_norm
from core.config import ModelConfig
from core.loss import cross_entropy
from core.model import forward
from core.optim import AdamWHParams, adamw_update
from core.tree import Tree, tree_flatten, tree_unflatten

GradMode = Literal["func", "autograd"]


@dataclass(frozen=True)
class StepConfig:
    model: ModelConfig
    adamw: AdamWHParams
    max_grad_norm: float
    # `torch.autograd.grad` or `torch.func.grad_and_value` over the same pure loss. bench/train.py
    # measures them: on the CPU autograd is the faster by a few percent (less dispatch per op).
    grad_mode: GradMode = "autograd"
    # e.g. ("cuda", torch.bfloat16): matmuls in bf16, parameters and optimizer state stay float32.
    autocast: tuple[str, torch.dtype] | None = None
    # torch.compile the loss (autograd: AOTAutograd then compiles its backward too) or the whole
    # grad_and_value transform (func). The optimizer step stays eager: it is already one foreach
    # kernel per operation.
    compile: bool = False


def loss_fn(
    params: Tree,
    x: Int[Tensor, "batch seq"],
    y: Int[Tensor, "batch seq"],
    config: ModelConfig,
    autocast: tuple[str, torch.dtype] | None = None,
) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy of the model on one batch."""
    with _autocast(autocast):
        logits = forward(params, x, config)
    return cross_entropy(logits, y)


def make_grad_and_value(config: StepConfig) -> Callable[[Tree, Tensor, Tensor], tuple[Tree, Tensor]]:
    """(params, x, y) -> (grads shaped like params, loss)."""

    def loss(params: Tree, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(params, x, y, config.model, config.autocast)

    if config.grad_mode == "func":
        grad_and_value = torch.func.grad_and_value(loss)
        return torch.compile(grad_and_value) if config.compile else grad_and_value
    if config.grad_mode != "autograd":
        raise ValueError(f"grad_mode must be 'func' or 'autograd', got {config.grad_mode!r}")
    if config.compile:
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
    config: StepConfig, schedule: Callable[[int], float]
) -> Callable[[Tree, dict[str, Any], tuple[Tensor, Tensor], int], tuple[Tree, dict[str, Any], dict[str, Any]]]:
    """The step function; `schedule` maps the step index (from 0) to the learning rate."""
    grad_and_value = make_grad_and_value(config)

    def train_step(
        params: Tree, opt_state: dict[str, Any], batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tree, dict[str, Any], dict[str, Any]]:
        x, y = batch
        grads, loss = grad_and_value(params, x, y)
        grads, grad_norm = clip_by_global_norm(grads, config.max_grad_norm)
        lr = schedule(step)
        params, opt_state = adamw_update(grads, opt_state, params, config.adamw, lr)
        return params, opt_state, {"loss": loss, "grad_norm": grad_norm, "lr": lr}

    return train_step


def _autocast(autocast: tuple[str, torch.dtype] | None) -> contextlib.AbstractContextManager:
    if autocast is None:
        return contextlib.nullcontext()
    device_type, dtype = autocast
    return torch.autocast(device_type, dtype=dtype)
