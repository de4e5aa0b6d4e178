"""What stays fixed while a run trains (`Run`), for one run or K variants trained together.

One run trains one model (on one process or, data-parallel, on several). K variants (a vectorised
sweep) train as K stacked models in one process (core/train_step.py, `variants=True`): each has its
own run directory, log, checkpoints and summary, exactly as if it had trained alone. Index k is
variant k throughout; a run alone is variant 0 of 1.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.stack import variant_view
from core.train_state import TrainState, variant_state
from core.train_step import Loss, TrainStep
from params.finite import non_finite_param
from pipelines.files.atomic import link_atomic
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import rank_batch, step_generator
from pipelines.training.data.prepare import TrainingData
from pipelines.training.distributed.processes import Processes, broadcast_object
from pipelines.training.distributed.sharding import Sharding
from pipelines.training.storage.checkpoint import save_train_state
from pipelines.training.storage.run_dir import checkpoint_path
from pipelines.training.storage.run_lock import RunLock

Verdict = tuple[str, str] | None  # None: saved; else ("diverged", why not good) or ("failed", the I/O error)


class NoLog:
    """The metrics log of a process that does not write (all but the main one)."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class Run:
    configs: tuple[TrainConfig, ...]  # one per variant; they differ only in per-variant settings
    data: TrainingData  # shared: the variants differ in neither data nor tokenizer
    schedules: tuple[Callable[[int], float], ...]  # each variant's learning rate by step, for the logs
    train_step: TrainStep  # (state, batch) -> (state, metrics): donated and checked (core/train_step.py)
    batch_loss: Loss  # (params, x, y) -> each variant's loss on its own batch, for the checkpoint check
    eval_loss: Loss  # (params, x, y) -> each variant's loss on one shared batch, for validation
    device: torch.device
    processes: Processes
    sharding: Sharding | None  # how the optimizer state is split over processes (--shard_optimizer)
    logs: tuple[Any, ...]  # each variant's MetricsLog on the main process, NoLog elsewhere
    flops_per_step: int  # one variant's matmul FLOPs of one step on one process (core/accounting.py)
    peak_flops: float  # one device's, for MFU (pipelines/training/hardware/peak.py)
    metas: tuple[dict, ...]  # what each variant's checkpoints record beside its state
    locks: tuple[RunLock, ...]  # held on each run directory by the main process until the run ends

    @property
    def config(self) -> TrainConfig:
        """The settings every variant has in common (shapes, intervals, max_steps): variant 0's."""
        return self.configs[0]

    @property
    def stacked(self) -> bool:
        return len(self.configs) > 1

    def run_dir(self, index: int = 0) -> Path:
        return Path(self.configs[index].run_dir)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one variant's step: its global batch, over every process and micro-batch."""
        config = self.config
        return config.data.batch_size * config.grad_accum * self.processes.world * config.model.context_length

    def batch(self, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's part of the batch of the step after `state`: a function of the run's key
        and the step only (pipelines/training/data/batches.py's rank_batch); stacked, each
        variant's from its own key, as (K, batch, seq)."""
        if not self.stacked:
            return self._batch(state.rng, state.step)
        batches = [self._batch(rng, state.step) for rng in state.rng]
        return torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])

    def _batch(self, rng: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        config, processes = self.config, self.processes
        return rank_batch(
            self.data.train, config.data.batch_size, config.model.context_length, self.device,
            step_generator(rng, step), rank=processes.rank, world=processes.world, micro_batches=config.grad_accum,
        )

    def save(self, names: Sequence[str], state: TrainState, variants: Sequence[int]) -> list[Verdict]:
        """Write each of `variants` (indices) of `state` under `names` if it is good; one verdict
        per variant, the same on every process. The main process checks and writes (the optimizer
        state gathered first when sharded)."""
        if self.sharding is not None:
            state = self.sharding.gathered(state)
        verdicts = None
        if self.processes.main:
            problems = self.problems(state)
            verdicts = [("diverged", problems[k]) if problems[k] is not None else self._write(k, names, state) for k in variants]
        return broadcast_object(verdicts, self.processes)

    def _write(self, index: int, names: Sequence[str], state: TrainState) -> Verdict:
        """Variant `index`'s checkpoint under names[0], the other names linked to that file."""
        one = variant_state(state, index) if self.stacked else state
        first = checkpoint_path(self.run_dir(index), names[0])
        try:
            save_train_state(first, one, self.metas[index])
            for name in names[1:]:
                link_atomic(first, checkpoint_path(self.run_dir(index), name))
        except OSError as error:  # a full disk, a vanished directory: the previous file is intact
            return ("failed", str(error))
        return None

    def problems(self, state: TrainState) -> list[str | None]:
        """Per variant, why its state is not good, or None: a non-finite parameter, or a non-finite
        loss on the batch the next step trains on (finite but blown-up weights overflow in the
        forward)."""
        variants = len(self.configs)
        views = [variant_view(state.params, k) for k in range(variants)] if self.stacked else [state.params]
        with torch.no_grad():
            x, y = self.batch(state)
            rows = self.config.data.batch_size  # one micro-batch
            losses = self.batch_loss(state.params, x[..., :rows, :], y[..., :rows, :]).reshape(-1).tolist()
        problems: list[str | None] = []
        for params, loss in zip(views, losses, strict=True):
            name = non_finite_param(params)
            if name is not None:
                problems.append(f"parameter {name} is not finite")
            else:
                problems.append(None if math.isfinite(loss) else f"its loss on the next batch is {loss}")
        return problems

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
