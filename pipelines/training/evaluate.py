"""Validation loss over a run's fixed validation windows."""

import torch

from core.train_step import Autocast, loss_fn
from core.tree import Tree
from pipelines.training.config import TrainConfig
from pipelines.training.data import eval_batches
from pipelines.training.prepare import TrainingData


def evaluate(params: Tree, data: TrainingData, config: TrainConfig, autocast: Autocast, device: torch.device) -> float:
    """Mean loss over the fixed validation windows (the same ones at every evaluation)."""
    total = 0.0
    batch_size, context = config.data.batch_size, config.model.context_length
    with torch.inference_mode():
        for x, y in eval_batches(data.valid, data.valid_starts, batch_size, context, device):
            total += loss_fn(params, x, y, config.model, autocast).item() * len(x)
    return total / len(data.valid_starts)
