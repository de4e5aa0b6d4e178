"""Validation loss over a run's fixed validation windows, shared out among the processes."""

import torch

from core.train_step import Autocast, loss_fn
from core.tree import Tree
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import eval_batches
from pipelines.training.distributed.processes import SINGLE, Processes, sum_over_processes
from pipelines.training.data.prepare import TrainingData


def evaluate(
    params: Tree, data: TrainingData, config: TrainConfig, autocast: Autocast, device: torch.device, processes: Processes = SINGLE
) -> float:
    """Mean loss over the fixed validation windows (the same ones at every evaluation); each
    process takes every world-th window and the sums are added up."""
    total = 0.0
    batch_size, context = config.data.batch_size, config.model.context_length
    starts = data.valid_starts[processes.rank :: processes.world]
    with torch.inference_mode():
        for x, y in eval_batches(data.valid, starts, batch_size, context, device):
            total += loss_fn(params, x, y, config.model, autocast).item() * len(x)
    total, count = sum_over_processes([total, float(len(starts))], processes, device)
    return total / count
