"""Refuse, before any work, a run whose training memory cannot fit on its device.

The estimate is core/accounting.py's memory model (parameters, gradients, AdamW moments,
activations kept for the backward pass). With the torch kernels, attention runs fused and never
stores the T x T score matrices, so those terms are left out; with the reference kernels they are
counted. A step draws its whole batch at once, every micro-batch of gradient accumulation
included (pipelines/training/data/batches.py), so the token windows count grad_accum times. Only a run estimated to need more than the device's whole memory is refused: the
estimate is for catching a mistyped context length or batch, not for fine sizing.
"""

import os

import torch

from core.accounting import BYTES_PER_FLOAT, training_memory
from core.errors import UsageError
from pipelines.training.config.config import TrainConfig

# Per row and position of a step's drawn windows: the int64 gather index, the int64 windows, and
# the int64 inputs and targets cut from them.
BATCH_BYTES_PER_POSITION = 4 * 8


def training_bytes(config: TrainConfig) -> int:
    """Estimated peak bytes of one training step of `config`."""
    model, batch = config.model, config.data.batch_size
    total = training_memory(model, batch).total
    if model.kernels == "torch":  # fused attention: no stored scores and softmax, per layer and head
        total -= BYTES_PER_FLOAT * model.num_layers * 2 * batch * model.num_heads * model.context_length**2
    return total + batch_bytes(config)


def batch_bytes(config: TrainConfig) -> int:
    """Bytes of one step's token windows: every micro-batch is drawn at once."""
    rows = config.data.batch_size * config.grad_accum
    return BATCH_BYTES_PER_POSITION * rows * (config.model.context_length + 1)


def device_memory(device: torch.device) -> int | None:
    """Total bytes of memory of `device` (the machine's RAM for the CPU), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def check_fits(config: TrainConfig, device: torch.device) -> None:
    """UsageError with both figures when the estimate exceeds the device's memory."""
    needed, available = training_bytes(config), device_memory(device)
    if available is not None and needed > available:
        accumulated = f" x grad_accum {config.grad_accum}" if config.grad_accum > 1 else ""
        raise UsageError(
            f"training needs about {needed / 2**30:,.1f} GiB (batch {config.data.batch_size}{accumulated} x context "
            f"{config.model.context_length}, {config.model.num_layers} layers; core/accounting.py's estimate), "
            f"more than the {available / 2**30:,.1f} GiB of {device}; lower --data.batch_size, --grad_accum or --model.context_length"
        )
