"""Train a Transformer LM: the loop around the pure step (core/train_step.py).

    run, state = start(config, resume)           # a fresh TrainState, or the one in last.pt
    while state.step < max_steps:
        state, metrics = run.step(state, batch for (state.rng, state.step))   # donated, checked
        at each log / eval / checkpoint boundary: log, evaluate, checkpoint
    finish(run, outcome)                         # final.pt, summary.json, samples

A run lives in one directory (pipelines/training/storage/run_dir.py lists its files). Its summary.json
ends with status "completed", "interrupted" (SIGINT/SIGTERM; a checkpoint of the current step was
written), "diverged" (a non-finite loss, gradient norm or validation loss: the step that saw it
was not applied and nothing more is written; the last checkpoint written stays the good one) or
"failed" (a checkpoint could not be written, e.g. a full disk; the previous one is intact).

A checkpoint is written only for a state shown good: finite parameters and a finite loss on the
batch the next step trains on. So no checkpoint ever holds weights that give non-finite logits.

Data-parallel (several processes under torchrun): every process runs this loop on its part of
each batch, with the gradients averaged inside the step; the processes agree each step on whether
to stop, so they stop at the same step, and only the main one logs and writes.
"""

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from core.gns import NoiseScale, two_batch_estimates
from core.train_state import TrainState
from core.train_step import Metrics
from pipelines.training.run.clock import Clock, is_boundary
from pipelines.training.config.config import TrainConfig
from pipelines.training.distributed.processes import any_process, stop_processes
from pipelines.training.run.evaluate import evaluate
from pipelines.training.run.run import Outcome, Run
from pipelines.training.storage.run_dir import FINAL, LAST, checkpoint_path
from pipelines.training.run.samples import write_samples
from pipelines.training.run.summary import run_summary, write_summary
from pipelines.training.run.signals import StopFlag, stop_on_signals
from pipelines.training.run.start import start


def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or, with `resume`, continue) the training `config` describes; returns the run directory."""
    return run_training(config, resume=resume)[0]


def run_training(config: TrainConfig, *, resume: bool = False) -> tuple[Path, str]:
    """`train`, also returning how the run ended (completed / interrupted / diverged / failed), the
    same on every process."""
    try:
        run, state = start(config, resume=resume)
        try:
            with stop_on_signals() as stop, contextlib.closing(run.log):
                outcome = train_loop(run, state, stop)
            finish(run, outcome)
        finally:
            if run.lock is not None:
                run.lock.release()
    finally:
        stop_processes()
    return run.run_dir, outcome.status


def train_loop(run: Run, state: TrainState, stop: StopFlag) -> Outcome:
    """Steps until max_steps, a signal, a divergence or a failed write; the boundaries log,
    evaluate and checkpoint."""
    config = run.config
    progress = _Progress(Clock(state.elapsed), saved_step=state.step if checkpoint_path(run.run_dir).exists() else None,
                         noise=NoiseScale() if config.gns else None)
    pending: list[Metrics] = []
    bar = tqdm(total=config.max_steps, initial=state.step, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not run.processes.main)
    with bar:
        while state.step < config.max_steps:
            state, metrics = run.step(state, run.batch(state))
            if not metrics["applied"]:  # the same on every process: loss and gradients are averaged
                what = "loss" if not bool(torch.isfinite(metrics["loss"])) else "gradient norm"
                return progress.diverged(run, state, f"non-finite {what} at step {state.step + 1}")
            pending.append(metrics)
            # All stop at one step. The flag is only read here: a signal handled while the collective
            # runs would otherwise be overwritten by its answer, and lost.
            stopping = any_process(stop.requested, run.processes, run.device)
            if not is_boundary(config, state.step, stopping):
                continue
            state = state.replace(elapsed=progress.clock.elapsed())
            progress.train_loss, pending = _log_training(run, state, pending, progress, bar), []
            if state.step % config.eval.every == 0 or state.step == config.max_steps:
                progress.val_loss = _log_validation(run, state, bar)
                if not math.isfinite(progress.val_loss):
                    return progress.diverged(run, state, f"non-finite validation loss at step {state.step}")
            if state.step % config.checkpoint_every == 0 or stopping:
                stopped = progress.checkpoint(run, (LAST,), state)
                if stopped is not None:
                    return stopped
            if stopping and state.step < config.max_steps:
                message = f"interrupted at step {state.step}; checkpoint saved to {checkpoint_path(run.run_dir)}"
                return progress.outcome(state, "interrupted", message)
            progress.clock.pause()  # evaluation and checkpointing are not training time
    return progress.checkpoint(run, (LAST, FINAL), state) or progress.outcome(
        state, "completed", f"finished {state.step} steps; final checkpoint {checkpoint_path(run.run_dir, FINAL)}"
    )


@dataclass
class _Progress:
    """What the loop knows so far: the clock, the latest losses, the step of the last checkpoint,
    and with --gns the noise scale's moving averages (they restart on resume: not checkpointed)."""

    clock: Clock
    saved_step: int | None
    train_loss: float | None = None
    val_loss: float | None = None
    noise: NoiseScale | None = None

    def outcome(self, state: TrainState, status: str, message: str) -> Outcome:
        return Outcome(state, status, message, self.train_loss, self.val_loss, self.clock.steps_per_s())

    def checkpoint(self, run: Run, names: tuple[str, ...], state: TrainState) -> Outcome | None:
        """Save `state` under `names`; the outcome that stops the run when it could not be."""
        verdict = run.save(names, state)
        if verdict is None:
            self.saved_step = state.step
            return None
        status, reason = verdict
        if status == "failed":
            return self.outcome(state, "failed", f"{reason}; {self._kept(run)}")
        return self.diverged(run, state, f"step {state.step} is not good: {reason}")

    def diverged(self, run: Run, state: TrainState, what: str) -> Outcome:
        run.log.write({"step": state.step + 1, "event": "diverged", "wall": self.clock.elapsed()})
        return self.outcome(state, "diverged", f"{what}; stopped, {self._kept(run)}")

    def _kept(self, run: Run) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {checkpoint_path(run.run_dir)} (step {self.saved_step})"


def _log_training(run: Run, state: TrainState, pending: list[Metrics], progress: _Progress, bar: tqdm) -> float:
    losses, norms = (torch.stack([m[k].float() for m in pending]).cpu() for k in ("loss", "grad_norm"))
    tokens_per_step = run.tokens_per_step
    seconds = progress.clock.interval(len(losses))
    flops_per_s = len(losses) * run.flops_per_step / seconds
    row = {
        "step": state.step,
        "tokens": state.step * tokens_per_step,
        "wall": state.elapsed,
        "train_loss": float(losses.mean()),
        "lr": run.schedule(state.step - 1),  # the rate of the step just taken
        "grad_norm": float(norms[-1]),
        "tokens_per_s": len(losses) * tokens_per_step / seconds,
        "flops_per_s": flops_per_s,
        "mfu": flops_per_s / run.peak_flops,
    }
    if progress.noise is not None:
        progress.noise = _noise_scale(run, progress.noise, pending, norms)
        row.update(progress.noise.readout())
    run.log.write(row)
    bar.update(state.step - bar.n)
    bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", mfu=f"{row['mfu']:.1%}")
    return row["train_loss"]


def _noise_scale(run: Run, noise: NoiseScale, pending: list[Metrics], norms: torch.Tensor) -> NoiseScale:
    """The averages after the pending steps: each step's micro-batches against its whole batch
    (float64 on the host: the estimates are differences of nearly equal squared norms)."""
    small_sq = torch.stack([m["micro_grad_sq"] for m in pending]).cpu().double()
    b_small, b_big = run.config.gns_batch_sizes(run.processes.world)
    return noise.updated(*two_batch_estimates(small_sq, norms.double().square(), b_small, b_big))


def _log_validation(run: Run, state: TrainState, bar: tqdm) -> float:
    loss = evaluate(state.params, run.data, run.config, run.autocast, run.device, run.processes)
    tokens = state.step * run.tokens_per_step
    run.log.write({"step": state.step, "tokens": tokens, "wall": state.elapsed, "val_loss": loss})
    if run.processes.main:
        bar.write(f"step {state.step}: val loss {loss:.4f}")
    return loss


def finish(run: Run, outcome: Outcome) -> dict:
    """summary.json for every run; samples for a completed one (written by the main process)."""
    state, config = outcome.state, run.config
    summary = run_summary(
        outcome.status, state.step, state.elapsed, outcome.train_loss, outcome.val_loss, outcome.steps_per_s,
        run.tokens_per_step, run.flops_per_step, run.peak_flops, config.model, outcome.message,
    )
    if not run.processes.main:
        return summary
    write_summary(run.run_dir, summary)
    print(outcome.message, file=sys.stderr)
    if outcome.status == "completed" and run.data.tokenizer is not None and config.sample.count:
        write_samples(run.run_dir, state.params, config, run.data.tokenizer)
    return summary
