"""What stays fixed while a run trains (`Run`), and how it ended (`Outcome`)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.optim import GradientTransformation
from core.train_state import TrainState
from core.train_step import Autocast, TrainStep, loss_fn
from core.tree import tree_leaves_by_path
from pipelines.training.storage.checkpoint import save_train_state
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import rank_batch, step_generator
from pipelines.training.distributed.processes import Processes, broadcast_object
from pipelines.training.data.prepare import TrainingData
from pipelines.training.storage.run_dir import checkpoint_path
from pipelines.training.storage.run_lock import RunLock
from pipelines.training.distributed.sharding import Sharding


class NoLog:
    """The metrics log of a process that does not write (all but the main one)."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Run:
    config: TrainConfig
    run_dir: Path
    data: TrainingData
    optimizer: GradientTransformation
    schedule: Callable[[int], float]  # the optimizer's learning rate by step, for the logs
    step: TrainStep
    autocast: Autocast
    device: torch.device
    processes: Processes
    sharding: Sharding | None  # how the optimizer state is split over processes (--shard_optimizer)
    log: Any  # MetricsLog on the main process, NoLog elsewhere
    flops_per_step: int  # matmul FLOPs of one step on one process, by core/accounting.py's count
    peak_flops: float  # one device's, for MFU (pipelines/training/hardware/peak.py)
    meta: dict  # what every checkpoint records beside the state: configs, tokenizer fingerprint
    lock: RunLock | None  # held on run_dir by the main process until the run ends

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one step's global batch, over every process and micro-batch."""
        config = self.config
        return config.data.batch_size * config.grad_accum * self.processes.world * config.model.context_length

    def batch(self, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's part of the batch of the step after `state`: a function of the run's key
        and the step only (pipelines/training/data/batches.py's rank_batch)."""
        config, processes = self.config, self.processes
        return rank_batch(
            self.data.train, config.data.batch_size, config.model.context_length, self.device,
            step_generator(state.rng, state.step), rank=processes.rank, world=processes.world, micro_batches=config.grad_accum,
        )

    def save(self, names: tuple[str, ...], state: TrainState) -> tuple[str, str] | None:
        """Write `state` under each of `names` if it is good. None when written; else the same
        (status, reason) on every process: ("diverged", why it is not good) or ("failed", the I/O
        error). The main process checks and writes (the optimizer state gathered first when sharded)."""
        if self.sharding is not None:
            state = self.sharding.gathered(state)
        verdict = None
        if self.processes.main:
            problem = self.problem(state)
            if problem is not None:
                verdict = ("diverged", problem)
            else:
                try:
                    for name in names:
                        save_train_state(checkpoint_path(self.run_dir, name), state, self.meta)
                except OSError as error:  # a full disk, a vanished directory: the previous file is intact
                    verdict = ("failed", str(error))
        return broadcast_object(verdict, self.processes)

    def problem(self, state: TrainState) -> str | None:
        """Why `state` is not good, or None: a non-finite parameter, or a non-finite loss on the
        batch the next step trains on (finite but blown-up weights overflow in the forward)."""
        for name, leaf in tree_leaves_by_path(state.params).items():
            if not bool(torch.isfinite(leaf).all()):
                return f"parameter {name} is not finite"
        with torch.no_grad():
            x, y = self.batch(state)
            loss = loss_fn(state.params, x[: self.config.data.batch_size], y[: self.config.data.batch_size], self.config.model, self.autocast)
        return None if bool(torch.isfinite(loss)) else f"its loss on the next batch is {float(loss)}"


@dataclass(frozen=True)
class Outcome:
    state: TrainState  # the state when the loop stopped (after the last applied step)
    status: str  # completed / interrupted / diverged / failed
    message: str
    train_loss: float | None
    val_loss: float | None
    steps_per_s: float | None  # training throughput, evaluation and checkpointing excluded
