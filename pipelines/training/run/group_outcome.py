"""How each variant of a stacked group ends, and its summary.json: the same statuses, messages
and keys as a run trained alone (pipelines/training/run/loop.py), so sweeps, experiment_log, plot and
resume read a variant's directory as any other.

Throughput is each variant's own: a group step of s seconds trains every variant by batch x
context tokens, so a variant's tokens_per_s is that over s (and its MFU, its FLOPs over the
peak); the group's throughput is the sum over its variants.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from core.tree import Tree
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.prepare import TrainingData
from pipelines.training.storage.run_dir import checkpoint_path
from pipelines.training.run.samples import write_samples
from pipelines.training.run.summary import run_summary, write_summary


@dataclass(frozen=True)
class VariantOutcome:
    status: str  # completed / interrupted / diverged / failed
    message: str
    step: int  # updates applied to this variant
    elapsed: float  # the group's training seconds when this variant stopped
    steps_per_s: float | None  # the group's training throughput, evaluation and checkpointing excluded


@dataclass
class VariantProgress:
    """What the loop knows of one variant: its latest losses, the step of its last checkpoint,
    and, once it has stopped, how."""

    run_dir: Path
    saved_step: int | None
    train_loss: float | None = None
    val_loss: float | None = None
    outcome: VariantOutcome | None = None

    @property
    def training(self) -> bool:
        return self.outcome is None

    def stop(self, status: str, message: str, step: int, elapsed: float, steps_per_s: float | None) -> None:
        self.outcome = VariantOutcome(status, message, step, elapsed, steps_per_s)

    def kept(self) -> str:
        """Which checkpoint stays the good one, for a run that stopped badly."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {checkpoint_path(self.run_dir)} (step {self.saved_step})"


def finish_variant(config: TrainConfig, progress: VariantProgress, params: Tree, data: TrainingData, flops_per_step: int, peak: float) -> dict:
    """summary.json for the variant; samples from `params` (its final parameters) if it completed."""
    outcome = progress.outcome
    assert outcome is not None, "finish_variant: the variant is still training"
    summary = run_summary(
        outcome.status, outcome.step, outcome.elapsed, progress.train_loss, progress.val_loss, outcome.steps_per_s,
        config.data.batch_size * config.model.context_length, flops_per_step, peak, config.model, outcome.message,
    )
    run_dir = Path(config.run_dir)
    write_summary(run_dir, summary)
    print(f"{run_dir.name}: {outcome.message}", file=sys.stderr)
    if outcome.status == "completed" and data.tokenizer is not None and config.sample.count:
        write_samples(run_dir, params, config, data.tokenizer)
    return summary
