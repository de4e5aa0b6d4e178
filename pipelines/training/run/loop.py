"""Train a Transformer LM, or K variants of one as a stacked group: the loop around the pure step
(core/train_step.py).

    run, state = start(configs, resume)          # a fresh TrainState, or the one in last.pt
    while state.step < max_steps and a run still trains:
        state, metrics = run.train_step(state, run.batch(state))   # donated, checked
        a run whose step was not applied: diverged (stopped; stacked, masked out, the others go on)
        at each log / eval / checkpoint boundary: log, evaluate, checkpoint every run still training
    finish each run                              # summary.json, samples (outcome.py)

A run lives in one directory (pipelines/training/storage/run_dir.py lists its files); K variants
live in K, each ending as its run alone would: the same metrics rows, checkpoints, statuses and
messages, and, to fp32 rounding, the same numbers (its weights and batches come from its own seed,
and its slice of the stacked step computes what its own step would).

A checkpoint is written only for a state shown good: finite parameters and a finite loss on the
batch the next step trains on. So no checkpoint ever holds weights that give non-finite logits.
final.pt is a second name of the last checkpoint's file, not a copy.

Data-parallel (several processes under torchrun, one run): every process runs this loop on its
part of each batch, with the gradients averaged inside the step; the processes agree each step on
whether to stop, so they stop at the same step, and only the main one logs and writes.
"""

import contextlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from core.gns import NoiseScale, two_batch_estimates
from core.stack import variant_view
from core.train_state import TrainState
from core.train_step import Metrics
from pipelines.training.config.config import TrainConfig
from pipelines.training.distributed.processes import any_process, stop_processes
from pipelines.training.run.clock import Clock, is_boundary
from pipelines.training.run.evaluate import evaluate
from pipelines.training.run.outcome import Progress, finish
from pipelines.training.run.run import Run
from pipelines.training.run.signals import StopFlag, stop_on_signals
from pipelines.training.run.start import start
from pipelines.training.storage.run_dir import FINAL, LAST, checkpoint_path


def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or, with `resume`, continue) the training `config` describes; returns the run directory."""
    return run_training(config, resume=resume)[0]


def run_training(config: TrainConfig, *, resume: bool = False) -> tuple[Path, str]:
    """`train`, also returning how the run ended (completed / interrupted / diverged / failed), the
    same on every process."""
    try:
        return train_variants([config], resume=resume)[0]
    finally:
        stop_processes()


def train_variants(configs: Sequence[TrainConfig], *, resume: bool = False) -> list[tuple[Path, str]]:
    """Train `configs` (one run, or K variants that differ only in per-variant settings:
    pipelines/training/config/optimizer.py) together, or with `resume` continue them from their
    checkpoints, all at one step; each one's run directory and status. Resuming runs already
    complete does nothing."""
    started = start(configs, resume=resume)
    if started is None:
        return [(Path(config.run_dir), "completed") for config in configs]
    run, state = started
    try:
        with stop_on_signals() as stop, contextlib.ExitStack() as logs:
            for log in run.logs:
                logs.callback(log.close)
            state, progress = train_loop(run, state, stop)
        if run.processes.main:
            for k, (config, one) in enumerate(zip(run.configs, progress, strict=True)):
                # finish only samples from the params: a view of the stack, no copy
                params = variant_view(state.params, k) if run.stacked else state.params
                finish(config, one, params, run.data, tokens_per_step=run.tokens_per_step, flops_per_step=run.flops_per_step,
                       peak_flops=run.peak_flops, named=run.stacked)
    finally:
        run.release()
    return [(run.run_dir(k), one.outcome.status) for k, one in enumerate(progress)]


def train_loop(run: Run, state: TrainState, stop: StopFlag) -> tuple[TrainState, list[Progress]]:
    """Steps until max_steps, a signal, or every run stopped; the boundaries log, evaluate and
    checkpoint the runs still training."""
    config = run.config
    saved = [state.step if checkpoint_path(run.run_dir(k)).exists() else None for k in range(len(run.configs))]
    progress = [Progress(run.run_dir(k), step, noise=NoiseScale() if config.gns else None) for k, step in enumerate(saved)]
    clock, pending = Clock(state.elapsed), []
    bar = tqdm(total=config.max_steps, initial=state.step, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not run.processes.main)
    with bar:
        while state.step < config.max_steps and _training(progress):
            before = state
            state, metrics = run.train_step(state, run.batch(state))
            _stop_diverged(run, before, metrics, progress, clock)
            pending.append(metrics)
            # All stop at one step. The flag is only read here: a signal handled while the collective
            # runs would otherwise be overwritten by its answer, and lost.
            stopping = any_process(stop.requested, run.processes, run.device)
            if not _training(progress) or not is_boundary(config, state.step, stopping):
                continue
            state = state.replace(elapsed=clock.elapsed())
            _log_training(run, state, pending, progress, clock, bar)
            pending = []
            if state.step % config.eval.every == 0 or state.step == config.max_steps:
                _log_validation(run, state, progress, clock, bar)
            if state.step % config.checkpoint_every == 0 or stopping:
                _checkpoint(run, (LAST,), state, progress, clock)
            state = _mask_stopped(state, progress)
            if stopping and state.step < config.max_steps:
                for k, one in _training(progress):
                    message = f"interrupted at step {state.step}; checkpoint saved to {checkpoint_path(run.run_dir(k))}"
                    one.stop("interrupted", message, state.step, state.elapsed, clock.steps_per_s())
            clock.pause()  # evaluation and checkpointing are not training time
    if _training(progress):
        _checkpoint(run, (LAST, FINAL), state, progress, clock)
    for k, one in _training(progress):
        message = f"finished {state.step} steps; final checkpoint {checkpoint_path(run.run_dir(k), FINAL)}"
        one.stop("completed", message, state.step, state.elapsed, clock.steps_per_s())
    return state, progress


def _training(progress: list[Progress]) -> list[tuple[int, Progress]]:
    return [(k, one) for k, one in enumerate(progress) if one.training]


def _mask_stopped(state: TrainState, progress: list[Progress]) -> TrainState:
    """Stacked: the state with the variants that stopped at a boundary (diverged or failed there)
    masked out too, so that the step leaves them as they are."""
    if state.active is None:
        return state
    training = torch.tensor([one.training for one in progress], device=state.active.device)
    return state.replace(active=state.active & training)


def _per_run(value: torch.Tensor | bool) -> list:
    """A metric of one run (a 0-d tensor or a bool) or of K variants ((K,)) as K Python values."""
    return torch.as_tensor(value).reshape(-1).tolist()


def _diverge(run: Run, k: int, one: Progress, state: TrainState, what: str, clock: Clock, step: int | None = None) -> None:
    """Stop run k at `state` as diverged: an event row at `step` (default: state's), nothing written."""
    step = state.step if step is None else step
    run.logs[k].write({"step": step, "event": "diverged", "wall": clock.elapsed()})
    one.stop("diverged", f"{what}; stopped, {one.kept()}", step, state.elapsed, clock.steps_per_s())


def _stop_diverged(run: Run, before: TrainState, metrics: Metrics, progress: list[Progress], clock: Clock) -> None:
    """The runs whose step was not applied (a non-finite loss or gradient norm) stop at `before`,
    at the step that failed (the same on every process: loss and gradients are averaged)."""
    applied = _per_run(metrics["applied"])
    if all(applied):
        return
    losses = _per_run(metrics["loss"])
    for k, one in _training(progress):
        if not applied[k]:
            what = "loss" if not math.isfinite(losses[k]) else "gradient norm"
            _diverge(run, k, one, before, f"non-finite {what} at step {before.step + 1}", clock, step=before.step + 1)


def _log_training(run: Run, state: TrainState, pending: list[Metrics], progress: list[Progress], clock: Clock, bar: tqdm) -> None:
    losses, norms = (torch.stack([torch.as_tensor(m[key]).float().reshape(-1) for m in pending]).cpu() for key in ("loss", "grad_norm"))
    seconds = clock.interval(len(losses))
    tokens_per_s = len(losses) * run.tokens_per_step / seconds  # each variant's (outcome.py)
    flops_per_s = len(losses) * run.flops_per_step / seconds
    for k, one in _training(progress):
        row = {
            "step": state.step,
            "tokens": state.step * run.tokens_per_step,
            "wall": state.elapsed,
            "train_loss": float(losses[:, k].mean()),
            "lr": run.schedules[k](state.step - 1),  # the rate of the step just taken
            "grad_norm": float(norms[-1, k]),
            "tokens_per_s": tokens_per_s,
            "flops_per_s": flops_per_s,
            "mfu": flops_per_s / run.peak_flops,
        }
        if one.noise is not None:
            one.noise = _noise_scale(run, one.noise, pending, norms[:, k])
            row.update(one.noise.readout())
        run.logs[k].write(row)
        one.train_loss = row["train_loss"]
    bar.update(state.step - bar.n)
    training = [one.train_loss for _, one in _training(progress)]
    postfix = {"loss": f"{min(training):.3f}", "tok_s": f"{len(training) * tokens_per_s:.0f}", "mfu": f"{flops_per_s / run.peak_flops:.1%}"}
    if run.stacked:
        postfix["training"] = f"{len(training)}/{len(progress)}"
    else:
        postfix["lr"] = f"{run.schedules[0](state.step - 1):.2e}"  # the rate of the step just taken, as logged
    bar.set_postfix(postfix)


def _noise_scale(run: Run, noise: NoiseScale, pending: list[Metrics], norms: torch.Tensor) -> NoiseScale:
    """The averages after the pending steps: each step's micro-batches against its whole batch
    (float64 on the host: the estimates are differences of nearly equal squared norms)."""
    small_sq = torch.stack([m["micro_grad_sq"] for m in pending]).cpu().double()
    b_small, b_big = run.config.gns_batch_sizes(run.processes.world)
    return noise.updated(*two_batch_estimates(small_sq, norms.double().square(), b_small, b_big))


def _log_validation(run: Run, state: TrainState, progress: list[Progress], clock: Clock, bar: tqdm) -> None:
    """Every run's loss over the fixed validation windows; a non-finite one stops that run as diverged."""
    losses = evaluate(state.params, run.data, run.config, run.eval_loss, run.device, run.processes)
    tokens = state.step * run.tokens_per_step
    for k, one in _training(progress):
        run.logs[k].write({"step": state.step, "tokens": tokens, "wall": state.elapsed, "val_loss": losses[k]})
        one.val_loss = losses[k]
        if run.processes.main:
            bar.write(f"step {state.step}: {f'{run.run_dir(k).name} ' if run.stacked else ''}val loss {losses[k]:.4f}")
        if not math.isfinite(losses[k]):
            _diverge(run, k, one, state, f"non-finite validation loss at step {state.step}", clock)


def _checkpoint(run: Run, names: tuple[str, ...], state: TrainState, progress: list[Progress], clock: Clock) -> None:
    """Save each run still training under `names` if its state is good; one that is not stops as
    diverged, one whose file cannot be written as failed (its previous checkpoint is intact)."""
    training = _training(progress)
    verdicts = run.save(names, state, [k for k, _ in training])
    for (k, one), verdict in zip(training, verdicts, strict=True):
        if verdict is None:
            one.saved_step = state.step
        elif verdict[0] == "failed":
            one.stop("failed", f"{verdict[1]}; {one.kept()}", state.step, state.elapsed, clock.steps_per_s())
        else:
            _diverge(run, k, one, state, f"step {state.step} is not good: {verdict[1]}", clock)
