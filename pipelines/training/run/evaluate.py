"""Validation loss over a run's fixed validation windows, shared out among the processes."""

import torch

from core.train_step import Loss
from core.tree import Tree
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import eval_batches
from pipelines.training.data.prepare import TrainingData
from pipelines.training.distributed.processes import SINGLE, Processes, sum_over_processes


def evaluate(
    params: Tree, data: TrainingData, config: TrainConfig, loss: Loss, device: torch.device, processes: Processes = SINGLE
) -> list[float]:
    """Mean loss over the fixed validation windows (the same ones at every evaluation), one per
    variant: `loss` (params, x, y) gives one model's loss, or K stacked variants' on one shared
    batch (core/train_step.py's make_loss). Each process takes every world-th window and the sums
    are added up, in float64."""
    total: torch.Tensor | float = 0.0
    batch_size, context = config.data.batch_size, config.model.context_length
    starts = data.valid_starts[processes.rank :: processes.world]
    with torch.inference_mode():
        for x, y in eval_batches(data.valid, starts, batch_size, context, device):
            total = total + loss(params, x, y).cpu().double().reshape(-1) * len(x)
    totals = torch.as_tensor(total, dtype=torch.float64).reshape(-1).tolist()
    *totals, count = sum_over_processes([*totals, float(len(starts))], processes, device)
    return [value / count for value in totals]
