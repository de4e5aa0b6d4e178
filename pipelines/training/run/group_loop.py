"""Train K variants of one model as one stacked group: loop.py's loop, run once for all of them.

    run, state = start_group(configs)            # K run directories, one StackedTrainState
    while state.step < max_steps and a variant still trains:
        state, metrics = run.step(state, each variant's batch for (its key, state.step))
        a variant whose step was not applied: diverged (masked out; the others go on)
        at each log / eval / checkpoint boundary: log, evaluate, checkpoint every variant still training
    finish each variant                          # summary.json, final.pt, samples

Each variant's directory ends as its run alone would (group_outcome.py): the same metrics rows,
checkpoints, statuses and messages, and, to fp32 rounding, the same numbers: its initial weights
and batches are drawn from its own seed as loop.py draws them, and its slice of the stacked step
computes what its own step would. SIGINT/SIGTERM stop the whole group after the current step
with a checkpoint of every variant still training; a sweep resumes them as one group.
"""

import contextlib
import math
import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from core.optim.stacked import stacked_all_finite
from core.stack import unstack_tree
from core.stacked_train_state import StackedTrainState, variant_state
from core.stacked_train_step import StackedMetrics
from core.tree import tree_leaves_by_path
from pipelines.training.storage.checkpoint import save_train_state
from pipelines.training.run.clock import Clock, is_boundary
from pipelines.training.config.config import TrainConfig
from pipelines.training.data.batches import eval_batches
from pipelines.training.run.group_outcome import VariantProgress, finish_variant
from pipelines.training.run.group_start import GroupRun, start_group
from pipelines.training.config.optimizer import make_schedule
from pipelines.training.storage.run_dir import FINAL, LAST, checkpoint_path
from pipelines.training.run.signals import StopFlag, stop_on_signals


def train_group(configs: Sequence[TrainConfig]) -> list[str]:
    """Train (or resume, where a variant has a checkpoint) `configs` as one group; their statuses."""
    run, state = start_group(configs)
    try:
        with stop_on_signals() as stop, contextlib.ExitStack() as logs:
            for log in run.logs:
                logs.callback(log.close)
            state, progress = group_loop(run, state, stop)
        for index, (config, variant) in enumerate(zip(run.configs, progress, strict=True)):
            params = unstack_tree(state.params, index) if variant.outcome.status == "completed" else None
            finish_variant(config, variant, params, run.data, run.flops_per_step, run.peak_flops)
    finally:
        run.release()
    return [variant.outcome.status for variant in progress]


def group_loop(run: GroupRun, state: StackedTrainState, stop: StopFlag) -> tuple[StackedTrainState, list[VariantProgress]]:
    """Steps until max_steps, a signal, or every variant stopped; the boundaries log, evaluate and
    checkpoint the variants still training."""
    config = run.shared
    progress = [
        VariantProgress(run.run_dir(k), state.step if checkpoint_path(run.run_dir(k)).exists() else None)
        for k in range(state.variants)
    ]
    clock = Clock(state.elapsed)
    pending: list[StackedMetrics] = []
    bar = tqdm(total=config.max_steps, initial=state.step, unit="step", dynamic_ncols=True, file=sys.stderr)
    with bar:
        while state.step < config.max_steps and any(v.training for v in progress):
            before = state
            state, metrics = run.step(state, run.batch(state.step, state.rngs))
            _stop_diverged(run, before, metrics, progress, clock)
            pending.append(metrics)
            if not is_boundary(config, state.step, stop.requested):
                continue
            state = state.replace(elapsed=clock.elapsed())
            _log_training(run, state, pending, progress, clock, bar)
            pending = []
            if state.step % config.eval.every == 0 or state.step == config.max_steps:
                _log_validation(run, state, progress, clock, bar)
            if state.step % config.checkpoint_every == 0 or stop.requested:
                _checkpoint(run, (LAST,), state, progress, clock)
            state = _mask_stopped(state, progress)
            if stop.requested and state.step < config.max_steps:
                for k, variant in _training(progress):
                    message = f"interrupted at step {state.step}; checkpoint saved to {checkpoint_path(run.run_dir(k))}"
                    variant.stop("interrupted", message, state.step, state.elapsed, clock.steps_per_s())
                return state, progress
            clock.pause()  # evaluation and checkpointing are not training time
    _checkpoint(run, (LAST, FINAL), state, progress, clock)
    for k, variant in _training(progress):
        message = f"finished {state.step} steps; final checkpoint {checkpoint_path(run.run_dir(k), FINAL)}"
        variant.stop("completed", message, state.step, state.elapsed, clock.steps_per_s())
    return state, progress


def _mask_stopped(state: StackedTrainState, progress: list[VariantProgress]) -> StackedTrainState:
    """The state with the variants that stopped at a boundary (diverged or failed there) masked
    out too, so that the step stops updating them."""
    training = torch.tensor([v.training for v in progress], device=state.active.device)
    return state.replace(active=state.active & training)


def _training(progress: list[VariantProgress]) -> list[tuple[int, VariantProgress]]:
    return [(k, variant) for k, variant in enumerate(progress) if variant.training]


def _diverge(run: GroupRun, k: int, variant: VariantProgress, state: StackedTrainState, what: str, clock: Clock) -> None:
    """Stop variant k as loop.py stops a diverged run at `state`: an event row, nothing written."""
    run.logs[k].write({"step": state.step + 1, "event": "diverged", "wall": clock.elapsed()})
    variant.stop("diverged", f"{what}; stopped, {variant.kept()}", state.step, state.elapsed, clock.steps_per_s())


def _stop_diverged(run: GroupRun, before: StackedTrainState, metrics: StackedMetrics, progress: list[VariantProgress], clock: Clock) -> None:
    """The variants whose step was not applied (a non-finite loss or gradient norm) stop at `before`."""
    applied = metrics["applied"].tolist()
    for k, variant in _training(progress):
        if not applied[k]:
            what = "loss" if not bool(torch.isfinite(metrics["loss"][k])) else "gradient norm"
            _diverge(run, k, variant, before, f"non-finite {what} at step {before.step + 1}", clock)


def _log_training(
    run: GroupRun, state: StackedTrainState, pending: list[StackedMetrics], progress: list[VariantProgress], clock: Clock, bar: tqdm
) -> None:
    losses, norms = (torch.stack([m[key].float() for m in pending]).cpu() for key in ("loss", "grad_norm"))
    config = run.shared
    tokens_per_step = config.data.batch_size * config.model.context_length
    seconds = clock.interval(len(losses))
    flops_per_s = len(losses) * run.flops_per_step / seconds
    mean_losses = losses.mean(dim=0)
    for k, variant in _training(progress):
        row = {
            "step": state.step,
            "tokens": state.step * tokens_per_step,
            "wall": state.elapsed,
            "train_loss": float(mean_losses[k]),
            "lr": make_schedule(run.configs[k])(state.step - 1),  # the rate of the step just taken
            "grad_norm": float(norms[-1, k]),
            "tokens_per_s": len(losses) * tokens_per_step / seconds,  # this variant's (group_outcome.py)
            "flops_per_s": flops_per_s,
            "mfu": flops_per_s / run.peak_flops,
        }
        run.logs[k].write(row)
        variant.train_loss = row["train_loss"]
    bar.update(state.step - bar.n)
    training = [v.train_loss for _, v in _training(progress) if v.train_loss is not None]
    bar.set_postfix(training=len(training), best_loss=f"{min(training):.3f}" if training else "-", tok_s=f"{len(progress) * len(losses) * tokens_per_step / seconds:.0f}")


def _log_validation(run: GroupRun, state: StackedTrainState, progress: list[VariantProgress], clock: Clock, bar: tqdm) -> None:
    """Every variant's loss over the fixed validation windows (evaluate.py's, per variant); a
    non-finite one stops that variant as diverged."""
    config = run.shared
    totals = torch.zeros(state.variants, dtype=torch.float64)
    with torch.inference_mode():
        for x, y in eval_batches(run.data.valid, run.data.valid_starts, config.data.batch_size, config.model.context_length, run.device):
            totals += run.eval_loss(state.params, x, y).double().cpu() * len(x)
    losses = (totals / len(run.data.valid_starts)).tolist()
    tokens = state.step * config.data.batch_size * config.model.context_length
    for k, variant in _training(progress):
        run.logs[k].write({"step": state.step, "tokens": tokens, "wall": state.elapsed, "val_loss": losses[k]})
        variant.val_loss = losses[k]
        bar.write(f"step {state.step}: {run.run_dir(k).name} val loss {losses[k]:.4f}")
        if not math.isfinite(losses[k]):
            _diverge(run, k, variant, state, f"non-finite validation loss at step {state.step}", clock)


def _checkpoint(run: GroupRun, names: tuple[str, ...], state: StackedTrainState, progress: list[VariantProgress], clock: Clock) -> None:
    """Save each variant still training under `names` if its state is good; one that is not stops
    as diverged, one whose file cannot be written as failed (its previous checkpoint is intact)."""
    problems = _problems(run, state)
    for k, variant in _training(progress):
        if problems[k] is not None:
            _diverge(run, k, variant, state, f"step {state.step} is not good: {problems[k]}", clock)
            continue
        try:
            single = variant_state(state, k)
            for name in names:
                save_train_state(checkpoint_path(run.run_dir(k), name), single, run.metas[k])
        except OSError as error:  # a full disk, a vanished directory
            variant.stop("failed", f"{error}; {variant.kept()}", state.step, state.elapsed, clock.steps_per_s())
            continue
        variant.saved_step = state.step


def _problems(run: GroupRun, state: StackedTrainState) -> list[str | None]:
    """Per variant, why its state is not good (loop.Run.problem's reasons), or None."""
    finite = stacked_all_finite(state.params).tolist()
    with torch.no_grad():
        losses = run.batch_loss(state.params, *run.batch(state.step, state.rngs)).tolist()
    problems: list[str | None] = []
    for k in range(state.variants):
        if not finite[k]:
            name = next(name for name, leaf in tree_leaves_by_path(state.params).items() if not bool(torch.isfinite(leaf[k]).all()))
            problems.append(f"parameter {name} is not finite")
        else:
            problems.append(None if math.isfinite(losses[k]) else f"its loss on the next batch is {losses[k]}")
    return problems
