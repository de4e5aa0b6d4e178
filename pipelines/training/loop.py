"""Train a Transformer LM: the loop around the pure step (core/train_step.py).

    run, state = start(config, resume)           # a fresh TrainState, or the one in last.pt
    while state.step < max_steps:
        state, metrics = run.step(state, batch for (state.rng, state.step))   # donated, checked
        at each log / eval / checkpoint boundary: log, evaluate, checkpoint
    finish(run, outcome)                         # final.pt, summary.json, samples

A run lives in one directory (pipelines/training/run_dir.py lists its files). Its summary.json
ends with status "completed", "interrupted" (SIGINT/SIGTERM; a checkpoint of the current step was
written), "diverged" (a non-finite loss, gradient norm or validation loss: the step that saw it
was not applied and nothing more is written; the last checkpoint written stays the good one) or
"failed" (a checkpoint could not be written, e.g. a full disk; the previous one is intact).

A checkpoint is written only for a state shown good: finite parameters and a finite loss on the
batch the next step trains on. So no checkpoint ever holds weights that give non-finite logits.
"""

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import torch
from tqdm import tqdm

from core.accounting import training_step_flops
from core.config import ModelConfig
from core.optim import GradientTransformation
from core.train_state import TrainState, init_train_state
from core.train_step import Autocast, Metrics, TrainStep, loss_fn, make_train_step
from core.tree import tree_leaves_by_path
from params.init import count_params, init_params
from pipelines.training.atomic import remove_stale_temporaries, write_atomic
from pipelines.training.checkpoint import load_train_state, read_train_state, save_train_state
from pipelines.training.config import TrainConfig, with_overrides
from pipelines.training.data import get_batch, step_generator
from pipelines.training.evaluate import evaluate
from pipelines.training.device import autocast_for, enable_tf32
from pipelines.training.device_check import require_device
from pipelines.training.fits import check_fits
from pipelines.training.metrics import MetricsLog, import_wandb, start_wandb
from pipelines.training.optimizer import make_optimizer, make_schedule
from pipelines.training.peak import peak_flops
from pipelines.training.prepare import TrainingData, open_training_data, with_run_tokenizer
from pipelines.training.run_dir import CONFIG_FILE, FINAL, LAST, SUMMARY_FILE, TOKENIZER_DIR, checkpoint_path
from pipelines.training.run_lock import RunLock, check_run_dir_free, lock_run_dir
from pipelines.training.samples import write_samples
from pipelines.training.signals import StopFlag, stop_on_signals


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains."""

    config: TrainConfig
    run_dir: Path
    data: TrainingData
    optimizer: GradientTransformation
    schedule: Callable[[int], float]  # the optimizer's learning rate by step, for the logs
    step: TrainStep
    autocast: Autocast
    device: torch.device
    log: MetricsLog
    flops_per_step: int  # matmul FLOPs of one step, by core/accounting.py's count
    peak_flops: float  # the device's, for MFU (pipelines/training/peak.py)
    meta: dict  # what every checkpoint records beside the state: configs, tokenizer fingerprint
    lock: RunLock  # held on run_dir until the run ends

    def batch(self, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of the step after `state`: a function of the run's key and the step only."""
        config = self.config
        generator = step_generator(state.rng, state.step)
        return get_batch(self.data.train, config.data.batch_size, config.model.context_length, self.device, generator)

    def save(self, names: tuple[str, ...], state: TrainState) -> str | None:
        """Write `state` under each of `names` if it is good; else why it is not (nothing written)."""
        problem = self.problem(state)
        if problem is None:
            for name in names:
                save_train_state(checkpoint_path(self.run_dir, name), state, self.meta)
        return problem

    def problem(self, state: TrainState) -> str | None:
        """Why `state` is not good, or None: a non-finite parameter, or a non-finite loss on the
        batch the next step trains on (finite but blown-up weights overflow in the forward)."""
        for name, leaf in tree_leaves_by_path(state.params).items():
            if not bool(torch.isfinite(leaf).all()):
                return f"parameter {name} is not finite"
        with torch.no_grad():
            loss = loss_fn(state.params, *self.batch(state), self.config.model, self.autocast)
        return None if bool(torch.isfinite(loss)) else f"its loss on the next batch is {float(loss)}"


@dataclass(frozen=True)
class Outcome:
    state: TrainState  # the state when the loop stopped (after the last applied step)
    status: str  # completed / interrupted / diverged / failed
    message: str
    train_loss: float | None
    val_loss: float | None
    steps_per_s: float | None  # training throughput, evaluation and checkpointing excluded


def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or, with `resume`, continue) the training `config` describes; returns the run directory."""
    run, state = start(config, resume=resume)
    try:
        with stop_on_signals() as stop, contextlib.closing(run.log):
            outcome = train_loop(run, state, stop)
        finish(run, outcome)
    finally:
        run.lock.release()
    return run.run_dir


def start(config: TrainConfig, *, resume: bool) -> tuple[Run, TrainState]:
    """Check everything that can be checked before any work, then take the run directory (locked
    for the life of the run), open the data, build the step, and initialise or load the state."""
    config, device, saved, data, wandb = _check_before_work(config, resume)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    try:
        remove_stale_temporaries(run_dir)  # debris of a killed writer; the lock says none is alive
        write_atomic(run_dir / CONFIG_FILE, orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2))
        return _build_run(config, device, saved, with_run_tokenizer(data, run_dir, config.model.vocab_size), wandb, lock)
    except BaseException:
        lock.release()
        raise


def _check_before_work(config: TrainConfig, resume: bool) -> tuple[TrainConfig, torch.device, dict | None, TrainingData, object]:
    """The config with its run directory, the device, the checkpoint to resume and the data; every
    refusal (busy or occupied run directory, missing device, a model too big for it, bad data,
    a tokenizer that does not match) happens here, before anything is written."""
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = with_overrides(config, {"run_dir": str(run_dir)})
    check_run_dir_free(run_dir)
    device = require_device(config.device)
    check_fits(config, device)
    saved = _read_checkpoint(run_dir, config) if resume else None
    if not resume and checkpoint_path(run_dir).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or another --run_dir")
    wandb = import_wandb() if config.wandb else None  # a missing package fails here, before any work
    run_tokenizer = run_dir / TOKENIZER_DIR if resume and (run_dir / TOKENIZER_DIR).is_dir() else None
    data = open_training_data(config, run_tokenizer, saved["tokenizer"] if saved else None)
    return config, device, saved, data, wandb


def _build_run(config: TrainConfig, device: torch.device, saved: dict | None, data: TrainingData, wandb, lock: RunLock) -> tuple[Run, TrainState]:
    run_dir = Path(config.run_dir)
    enable_tf32(device)
    optimizer = make_optimizer(config)
    autocast = autocast_for(device)
    step = make_train_step(
        config.model, optimizer, grad_mode=config.grad_mode, autocast=autocast, compile=config.compile, donate=True  # type: ignore[arg-type]
    )
    if saved is None:
        params = init_params(config.model, torch.Generator().manual_seed(config.seed), device=device)
        state = init_train_state(params, optimizer, rng=config.seed)
    else:
        state = load_train_state(saved, config.model, optimizer, device, source=checkpoint_path(run_dir))
    wandb_run = start_wandb(wandb, config.wandb_project, run_dir, config.to_dict()) if wandb else None
    peak, source = peak_flops(device, autocast[1] if autocast else torch.float32)
    print(
        f"{'resuming' if saved else 'training'} {run_dir} on {device} (peak {peak / 1e12:.3g} TFLOP/s, {source}): "
        f"{count_params(config.model):,} parameters, {len(data.train):,} train / {len(data.valid):,} valid tokens, "
        f"steps {state.step}..{config.max_steps}",
        file=sys.stderr,
    )
    meta = {
        "model_config": config.model.to_dict(),
        "train_config": config.to_dict(),
        "tokenizer": data.tokenizer.fingerprint() if data.tokenizer else None,
    }
    flops = training_step_flops(config.model, config.data.batch_size)
    run = Run(config, run_dir, data, optimizer, make_schedule(config), step, autocast, device,
              MetricsLog(run_dir, wandb_run), flops, peak, meta, lock)
    return run, state


def _read_checkpoint(run_dir: Path, config: TrainConfig) -> dict:
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    saved = read_train_state(path)
    changed = config.model.architecture_changes(ModelConfig.from_dict(saved["model_config"]))
    if changed:
        raise ValueError(f"--resume: the model config differs from the checkpoint {path} in {changed}")
    return saved


def train_loop(run: Run, state: TrainState, stop: StopFlag) -> Outcome:
    """Steps until max_steps, a signal, a divergence or a failed write; the boundaries log,
    evaluate and checkpoint."""
    config = run.config
    progress = _Progress(_Clock(state.elapsed), saved_step=state.step if checkpoint_path(run.run_dir).exists() else None)
    pending: list[Metrics] = []
    bar = tqdm(total=config.max_steps, initial=state.step, unit="step", dynamic_ncols=True, file=sys.stderr)
    with bar:
        while state.step < config.max_steps:
            state, metrics = run.step(state, run.batch(state))
            if not metrics["applied"]:
                what = "loss" if not bool(torch.isfinite(metrics["loss"])) else "gradient norm"
                return progress.diverged(run, state, f"non-finite {what} at step {state.step + 1}")
            pending.append(metrics)
            if not _is_boundary(config, state.step, stop.requested):
                continue
            state = state.replace(elapsed=progress.clock.elapsed())
            progress.train_loss, pending = _log_training(run, state, pending, progress.clock, bar), []
            if state.step % config.eval.every == 0 or state.step == config.max_steps:
                progress.val_loss = _log_validation(run, state, bar)
                if not math.isfinite(progress.val_loss):
                    return progress.diverged(run, state, f"non-finite validation loss at step {state.step}")
            if state.step % config.checkpoint_every == 0 or stop.requested:
                stopped = progress.checkpoint(run, (LAST,), state)
                if stopped is not None:
                    return stopped
            if stop.requested and state.step < config.max_steps:
                message = f"interrupted at step {state.step}; checkpoint saved to {checkpoint_path(run.run_dir)}"
                return progress.outcome(state, "interrupted", message)
            progress.clock.pause()  # evaluation and checkpointing are not training time
    return progress.checkpoint(run, (LAST, FINAL), state) or progress.outcome(
        state, "completed", f"finished {state.step} steps; final checkpoint {checkpoint_path(run.run_dir, FINAL)}"
    )


@dataclass
class _Progress:
    """What the loop knows so far: the clock, the latest losses, the step of the last checkpoint."""

    clock: "_Clock"
    saved_step: int | None
    train_loss: float | None = None
    val_loss: float | None = None

    def outcome(self, state: TrainState, status: str, message: str) -> Outcome:
        return Outcome(state, status, message, self.train_loss, self.val_loss, self.clock.steps_per_s())

    def checkpoint(self, run: Run, names: tuple[str, ...], state: TrainState) -> Outcome | None:
        """Save `state` under `names`; the outcome that stops the run when it could not be."""
        try:
            problem = run.save(names, state)
        except OSError as error:  # a full disk, a vanished directory: the previous file is intact
            return self.outcome(state, "failed", f"{error}; {self._kept(run)}")
        if problem is not None:
            return self.diverged(run, state, f"step {state.step} is not good: {problem}")
        self.saved_step = state.step
        return None

    def diverged(self, run: Run, state: TrainState, what: str) -> Outcome:
        run.log.write({"step": state.step + 1, "event": "diverged", "wall": self.clock.elapsed()})
        return self.outcome(state, "diverged", f"{what}; stopped, {self._kept(run)}")

    def _kept(self, run: Run) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {checkpoint_path(run.run_dir)} (step {self.saved_step})"


class _Clock:
    """Wall-clock seconds of the run across resumes, and training throughput between boundaries."""

    def __init__(self, elapsed: float) -> None:
        self.started, self.before = time.perf_counter(), elapsed
        self.interval_start = self.started
        self.train_seconds, self.train_steps = 0.0, 0

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.started

    def interval(self, steps: int) -> float:
        """Seconds since the last pause, counted as the time of `steps` training steps."""
        seconds = time.perf_counter() - self.interval_start
        self.train_seconds, self.train_steps = self.train_seconds + seconds, self.train_steps + steps
        return seconds

    def pause(self) -> None:
        self.interval_start = time.perf_counter()

    def steps_per_s(self) -> float | None:
        return self.train_steps / self.train_seconds if self.train_seconds else None


def _is_boundary(config: TrainConfig, step: int, stopping: bool) -> bool:
    every = (config.log_every, config.eval.every, config.checkpoint_every)
    return stopping or step == config.max_steps or any(step % n == 0 for n in every)


def _log_training(run: Run, state: TrainState, pending: list[Metrics], clock: _Clock, bar: tqdm) -> float:
    losses, norms = (torch.stack([m[k].float() for m in pending]).cpu() for k in ("loss", "grad_norm"))
    tokens_per_step = run.config.data.batch_size * run.config.model.context_length
    seconds = clock.interval(len(losses))
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
    run.log.write(row)
    bar.update(state.step - bar.n)
    bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", mfu=f"{row['mfu']:.1%}")
    return row["train_loss"]


def _log_validation(run: Run, state: TrainState, bar: tqdm) -> float:
    loss = evaluate(state.params, run.data, run.config, run.autocast, run.device)
    tokens = state.step * run.config.data.batch_size * run.config.model.context_length
    run.log.write({"step": state.step, "tokens": tokens, "wall": state.elapsed, "val_loss": loss})
    bar.write(f"step {state.step}: val loss {loss:.4f}")
    return loss


def finish(run: Run, outcome: Outcome) -> dict:
    """summary.json for every run; samples for a completed one."""
    state, config = outcome.state, run.config
    tokens_per_step = config.data.batch_size * config.model.context_length

    def rate(per_step: float) -> float | None:
        return None if outcome.steps_per_s is None else outcome.steps_per_s * per_step

    summary = {
        "status": outcome.status,
        "step": state.step,
        "tokens": state.step * tokens_per_step,
        "wall": state.elapsed,
        "train_loss": outcome.train_loss,
        "val_loss": outcome.val_loss,
        "tokens_per_s": rate(tokens_per_step),
        "flops_per_s": rate(run.flops_per_step),
        "mfu": rate(run.flops_per_step / run.peak_flops),
        "parameters": count_params(config.model),
        "message": outcome.message,
    }
    write_atomic(run.run_dir / SUMMARY_FILE, orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(outcome.message, file=sys.stderr)
    if outcome.status == "completed" and run.data.tokenizer is not None and config.sample.count:
        write_samples(run.run_dir, state.params, config, run.data.tokenizer)
    return summary
