"""How each run ends, and its summary.json and samples: the same statuses, messages and keys for a
run alone and for each of K variants trained together, so sweeps, experiment_log, plot and resume
read a variant's directory as any other.

A run ends "completed", "interrupted" (SIGINT/SIGTERM; a checkpoint of the current step was
written), "diverged" (a non-finite loss, gradient norm or validation loss, or a state that is not
good to checkpoint; nothing more is written and the last checkpoint written stays the good one) or
"failed" (a checkpoint could not be written, e.g. a full disk; the previous one is intact).

Steps are numbered by update, as in metrics.jsonl: step N is the N-th update, and a state at
step N has had N updates. The summary's step is the last step the run took: for a step that was
not applied (its loss or gradient norm not finite), that step, which the message names too.

Throughput is each variant's own: a stacked step of s seconds trains every variant by one batch,
so a variant's tokens_per_s is its batch's tokens over s (and its MFU its FLOPs over the peak).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from core.gns import NoiseScale
from core.tree import Tree
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.prepare import TrainingData
from pipelines.training.run.samples import write_samples
from pipelines.training.run.summary import run_summary, write_summary
from pipelines.training.storage.run_dir import checkpoint_path


@dataclass(frozen=True)
class Outcome:
    status: str  # completed / interrupted / diverged / failed
    message: str
    step: int  # the last step the run took (module docstring)
    elapsed: float  # training seconds when it stopped, across resumes
    steps_per_s: float | None  # training throughput, evaluation and checkpointing excluded


@dataclass
class Progress:
    """What the loop knows of one run: its latest losses, the step of its last checkpoint, with
    --gns the noise scale's moving averages (they restart on resume: not checkpointed), and, once
    it has stopped, how."""

    run_dir: Path
    saved_step: int | None
    train_loss: float | None = None
    val_loss: float | None = None
    noise: NoiseScale | None = None
    outcome: Outcome | None = None

    @property
    def training(self) -> bool:
        return self.outcome is None

    def stop(self, status: str, message: str, step: int, elapsed: float, steps_per_s: float | None) -> None:
        self.outcome = Outcome(status, message, step, elapsed, steps_per_s)

    def kept(self) -> str:
        """Which checkpoint stays the good one, for a run that stopped badly."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {checkpoint_path(self.run_dir)} (step {self.saved_step})"


def finish(
    config: TrainConfig, progress: Progress, params: Tree, data: TrainingData, *,
    tokens_per_step: int, flops_per_step: int, peak_flops: float, named: bool,
) -> dict:
    """summary.json; samples from `params` (the final parameters) if the run completed. `named`
    puts the run's name before its message (one of several variants)."""
    outcome = progress.outcome
    assert outcome is not None, "finish: the run is still training"
    summary = run_summary(
        status=outcome.status, step=outcome.step, wall=outcome.elapsed, train_loss=progress.train_loss,
        val_loss=progress.val_loss, steps_per_s=outcome.steps_per_s, tokens_per_step=tokens_per_step,
        flops_per_step=flops_per_step, peak_flops=peak_flops, model=config.model, message=outcome.message,
    )
    run_dir = Path(config.run_dir)
    write_summary(run_dir, summary)
    print(f"{run_dir.name}: {outcome.message}" if named else outcome.message, file=sys.stderr)
    if outcome.status == "completed" and data.tokenizer is not None and config.sample.count:
        write_samples(run_dir, params, config, data.tokenizer)
    return summary
