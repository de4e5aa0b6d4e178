"""Starting K variants that train as one stacked group (a vectorised sweep): each in its own run
directory, as `loop.start` starts one run, and all of them in one StackedTrainState.

Every variant's directory gets what a run of its own gets: its lock, config.json, a copy of the
tokenizer and metrics.jsonl. A variant with a checkpoint resumes from it; the group trains in
lock-step, so the resumed variants must all be at one step (the sweep groups them by step).
"""

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from core.accounting import training_step_flops
from core.config import ModelConfig
from core.stack import stack_trees
from core.stacked_train_state import StackedTrainState, stack_states
from core.stacked_train_step import StackedLoss, StackedTrainStep, make_stacked_loss, make_stacked_train_step
from core.train_step import Autocast
from params.init import count_params, init_params
from pipelines.training.storage.checkpoint import load_train_state, read_train_state
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import get_batch, step_generator
from pipelines.training.hardware.device import autocast_for, enable_tf32
from pipelines.training.hardware.device_check import require_device
from pipelines.training.hardware.malloc import keep_freed_memory
from pipelines.training.storage.metrics import MetricsLog
from pipelines.training.config.optimizer import make_optimizer
from pipelines.training.hardware.peak import peak_flops
from pipelines.training.data.prepare import TrainingData, open_training_data, with_run_tokenizer
from pipelines.training.storage.run_dir import TOKENIZER_DIR, checkpoint_path
from pipelines.training.storage.run_lock import RunLock, check_run_dir_free
from pipelines.training.config.stackable import why_not_stackable
from pipelines.training.run.start import take_run_dir
from pipelines.training.config.stacked_optimizer import make_stacked_optimizer

# On the CPU, vmap runs torch's fused attention kernel once per variant (it has no batching rule
# there), and torch warns about it; that is what K sequential runs do anyway.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")


@dataclass(frozen=True)
class GroupRun:
    """What stays fixed while a group trains; index k is variant k throughout."""

    configs: tuple[TrainConfig, ...]
    data: TrainingData  # shared: the variants differ in neither data nor tokenizer
    step: StackedTrainStep
    batch_loss: StackedLoss  # (stacked params, x, y of (K, batch, seq)) -> (K,) losses
    eval_loss: StackedLoss  # (stacked params, x, y of (batch, seq), shared) -> (K,) losses
    autocast: Autocast
    device: torch.device
    logs: tuple[MetricsLog, ...]
    flops_per_step: int  # one variant's matmul FLOPs per step (core/accounting.py)
    peak_flops: float
    metas: tuple[dict, ...]  # what each variant's checkpoints record beside its state
    locks: tuple[RunLock, ...]

    @property
    def shared(self) -> TrainConfig:
        """The settings every variant has in common (shapes, intervals, max_steps): variant 0's."""
        return self.configs[0]

    def run_dir(self, index: int) -> Path:
        return Path(self.configs[index].run_dir)

    def batch(self, step: int, rngs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each variant's batch of the step after `step`, stacked: (K, batch, seq). Variant k's
        is the batch its sequential run draws (loop.Run.batch): a function of its key and the step."""
        config = self.shared
        batches = [
            get_batch(self.data.train, config.data.batch_size, config.model.context_length, self.device, step_generator(rng, step))
            for rng in rngs
        ]
        return torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def start_group(configs: Sequence[TrainConfig]) -> tuple[GroupRun, StackedTrainState]:
    """Check everything first (the variants stack, directories free, device, checkpoints, data),
    then lock and fill each run directory and build the group's step and state."""
    configs = tuple(configs)
    reason = why_not_stackable(configs)
    if reason is not None:
        raise ValueError(f"these variants cannot train as one group: {reason}")
    for config in configs:
        check_run_dir_free(config.run_dir)
    device = require_device(configs[0].device)
    saved = [_read_checkpoint(config) for config in configs]
    data = _open_data(configs, saved)
    locks: list[RunLock] = []
    try:
        for config in configs:
            locks.append(take_run_dir(config))
        data = with_run_tokenizer(data, Path(configs[0].run_dir), configs[0].model.vocab_size)
        for config in configs[1:]:
            with_run_tokenizer(data, Path(config.run_dir), config.model.vocab_size)  # each run its own copy
        return _build_group(configs, device, saved, data, tuple(locks))
    except BaseException:
        for lock in locks:
            lock.release()
        raise


def _read_checkpoint(config: TrainConfig) -> dict | None:
    """The variant's last checkpoint, checked against its model, or None for a fresh variant."""
    path = checkpoint_path(config.run_dir)
    if not path.exists():
        return None
    saved = read_train_state(path)
    changed = config.model.architecture_changes(ModelConfig.from_dict(saved["model_config"]))
    if changed:
        raise ValueError(f"resuming {config.run_dir}: the model config differs from the checkpoint {path} in {changed}")
    return saved


def _open_data(configs: tuple[TrainConfig, ...], saved: list[dict | None]) -> TrainingData:
    """The data, opened and checked once for the group (as variant 0's run would open it); every
    resumed variant's checkpoint must name the tokenizer variant 0's does."""
    first = Path(configs[0].run_dir)
    run_tokenizer = first / TOKENIZER_DIR if saved[0] and (first / TOKENIZER_DIR).is_dir() else None
    data = open_training_data(configs[0], run_tokenizer, saved[0]["tokenizer"] if saved[0] else None)
    recorded = {s["tokenizer"] for s in saved if s is not None}
    if len(recorded) > 1:
        raise ValueError(f"the checkpoints of {[c.run_dir for c in configs]} record different tokenizers; resume them one by one")
    return data


def _build_group(
    configs: tuple[TrainConfig, ...], device: torch.device, saved: list[dict | None], data: TrainingData, locks: tuple[RunLock, ...]
) -> tuple[GroupRun, StackedTrainState]:
    enable_tf32(device)
    if device.type == "cpu":
        keep_freed_memory()  # K models' buffers: page faults would cost more than the arithmetic
    model, autocast = configs[0].model, autocast_for(device)
    optimizer = make_stacked_optimizer(configs)
    step = make_stacked_train_step(model, optimizer, autocast=autocast, compile=configs[0].compile)
    state = _initial_state(configs, device, saved, optimizer)
    peak, source = peak_flops(device, autocast[1] if autocast else torch.float32)
    print(
        f"{'resuming' if saved[0] else 'training'} {len(configs)} variants as one group on {device} (peak {peak / 1e12:.3g} TFLOP/s, "
        f"{source}): {count_params(model):,} parameters each, {len(data.train):,} train / {len(data.valid):,} valid tokens, "
        f"steps {state.step}..{configs[0].max_steps}",
        file=sys.stderr,
    )
    tokenizer = data.tokenizer.fingerprint() if data.tokenizer else None
    metas = tuple({"model_config": c.model.to_dict(), "train_config": c.to_dict(), "tokenizer": tokenizer} for c in configs)
    logs = tuple(MetricsLog(Path(c.run_dir)) for c in configs)
    flops = training_step_flops(model, configs[0].data.batch_size)
    losses = make_stacked_loss(model, autocast), make_stacked_loss(model, autocast, shared_batch=True)
    return GroupRun(configs, data, step, *losses, autocast, device, logs, flops, peak, metas, locks), state


def _initial_state(configs: tuple[TrainConfig, ...], device: torch.device, saved: list[dict | None], optimizer) -> StackedTrainState:
    """Fresh: each variant's initial weights from its own seed, as its sequential run draws them.
    Resumed: each variant's checkpoint, loaded with its sequential optimizer as the template."""
    if all(s is None for s in saved):
        params = stack_trees([init_params(c.model, torch.Generator().manual_seed(c.seed), device=device) for c in configs])
        active = torch.ones(len(configs), dtype=torch.bool, device=device)
        return StackedTrainState(params, optimizer.init(params), active, 0, tuple(c.seed for c in configs), 0.0)
    if any(s is None for s in saved):
        raise ValueError("a group is either all fresh or all resumed at one step; the sweep groups variants by step")
    states = [
        load_train_state(s, c.model, make_optimizer(c), device, source=checkpoint_path(c.run_dir))
        for s, c in zip(saved, configs, strict=True)
    ]
    return stack_states(states)
