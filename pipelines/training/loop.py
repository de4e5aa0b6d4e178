"""Train a Transformer LM: `python -m pipelines.training.loop tinystories --preset cpu-small --data ../shared/data`.

The loop around the pure step (core/train_step.py):

    batch = get_batch(train tokens)                 # random windows, data generator
    params, opt_state, metrics = train_step(params, opt_state, batch, step)
    every log/eval/checkpoint boundary: check the losses are finite, log, evaluate, checkpoint

A run lives in one directory: config.json (the resolved config), metrics.jsonl, checkpoints/
(last.pt, final.pt), samples.txt and summary.json (status, final losses, throughput).
"""

import argparse
import contextlib
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from tqdm import tqdm

from core.config import ModelConfig
from core.optim import AdamWHParams, adamw_init
from core.schedule import cosine_schedule
from core.tokenizer import Tokenizer
from core.train_step import StepConfig, loss_fn, make_train_step
from params.init import count_params, init_params
from pipelines.training.checkpoint import capture_rng, load_training_state, restore_rng, save_training_state
from pipelines.training.data import check_tokens, eval_batches, eval_starts, get_batch, open_tokens
from pipelines.training.device import autocast_for, enable_tf32, select_device
from pipelines.generate import sample_stories
from pipelines.training.metrics import MetricsLog, import_wandb, start_wandb
from pipelines.training.prepare import prepare_data
from pipelines.training.run_dir import CONFIG_FILE, FINAL, LAST, SAMPLES_FILE, SUMMARY_FILE, TOKENIZER_DIR, checkpoint_path
from pipelines.training.config import TrainConfig, add_config_arguments, overrides_from_args, resolve_config, with_overrides


@dataclass(frozen=True)
class _Snapshot:
    """What a checkpoint holds of a run's progress."""

    step: int
    params: Any
    opt_state: Any
    rng: dict[str, Any]
    elapsed: float


def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or, with `resume`, continue) the training `config` describes; returns the run directory.

    The run ends with summary.json's status: "completed", "interrupted" (SIGINT/SIGTERM; a
    checkpoint of the current step was written) or "diverged" (a non-finite loss or gradient; the
    last good checkpoint was written). Sweeps read that file rather than catching exceptions."""
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = with_overrides(config, run_dir=str(run_dir))
    device = select_device(config.device)
    saved = _saved_state(run_dir, config, device) if resume else None
    if not resume and checkpoint_path(run_dir).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or another --run-dir")
    wandb = import_wandb() if config.wandb else None  # a missing package fails here, before any work

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_bytes(orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2))
    data = _open_data(config, run_dir)
    enable_tf32(device)
    step_config = StepConfig(
        model=config.model,
        adamw=AdamWHParams((config.beta1, config.beta2), config.eps, config.weight_decay),
        max_grad_norm=config.max_grad_norm,
        grad_mode=config.grad_mode,  # type: ignore[arg-type]
        autocast=autocast_for(device),
        compile=config.compile,
    )
    schedule = partial(
        cosine_schedule,
        max_learning_rate=config.lr,
        min_learning_rate=config.final_lr,
        warmup_iters=config.warmup_steps,
        cosine_cycle_iters=config.decay_steps,
    )
    train_step = make_train_step(step_config, schedule)

    data_generator = torch.Generator().manual_seed(config.seed + 1)
    if saved is None:
        torch.manual_seed(config.seed)
        params = init_params(config.model, torch.Generator().manual_seed(config.seed), device=device)
        opt_state, step, elapsed = adamw_init(params), 0, 0.0
    else:
        params, opt_state, step, elapsed = saved["params"], saved["opt_state"], saved["step"], saved["elapsed"]
        restore_rng(saved["rng"], data_generator)

    def save(name: str, snapshot: _Snapshot) -> None:
        save_training_state(checkpoint_path(run_dir, name), {
            "step": snapshot.step,
            "params": snapshot.params,
            "opt_state": snapshot.opt_state,
            "rng": snapshot.rng,
            "elapsed": snapshot.elapsed,
            "model_config": config.model.to_dict(),
            "train_config": config.to_dict(),
            "tokenizer": data.tokenizer.fingerprint() if data.tokenizer else None,
        })

    started = time.perf_counter()

    def wall() -> float:  # seconds of this run, across resumes
        return elapsed + time.perf_counter() - started

    tokens_per_step = config.batch_size * config.model.context_length
    log = MetricsLog(run_dir, start_wandb(wandb, config.wandb_project, run_dir, config.to_dict()) if wandb else None)
    print(
        f"{'resuming' if saved else 'training'} {run_dir} on {device}: {count_params(config.model):,} parameters, "
        f"{len(data.train):,} train / {len(data.valid):,} valid tokens, steps {step}..{config.max_steps}",
        file=sys.stderr,
    )
    # `good` is the latest state whose every loss and gradient norm was checked finite. The step is
    # pure, so keeping it is only keeping references: no copy.
    good = _Snapshot(step, params, opt_state, capture_rng(data_generator), wall())
    pending: list[dict[str, Any]] = []  # metrics of the steps since the last boundary, still on the device
    interval_start, train_seconds, trained_steps = time.perf_counter(), 0.0, 0
    last_train_loss = last_val_loss = None
    status, message = "completed", ""
    bar = tqdm(total=config.max_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
    with _stop_on_signals() as stop, contextlib.closing(log), bar:
        while step < config.max_steps:
            batch = get_batch(data.train, config.batch_size, config.model.context_length, device, data_generator)
            params, opt_state, metrics = train_step(params, opt_state, batch, step)
            step += 1
            pending.append(metrics)
            stopping = stop.requested
            every = (config.log_every, config.eval_every, config.checkpoint_every)
            if not (stopping or step == config.max_steps or any(step % n == 0 for n in every)):
                continue

            # A boundary: one host sync for all the steps since the last one.
            losses = torch.stack([m["loss"].float() for m in pending]).cpu()
            norms = torch.stack([m["grad_norm"].float() for m in pending]).cpu()
            bad = _first_non_finite(losses, norms)
            if bad is not None:
                index, what = bad
                bad_step = step - len(pending) + index + 1
                save(LAST, good)
                log.write({"step": bad_step, "event": "diverged", "wall": wall()})
                status = "diverged"
                message = (f"non-finite {what} at step {bad_step}; stopped and saved the last good checkpoint "
                           f"(step {good.step}) to {checkpoint_path(run_dir)}")
                break
            interval = time.perf_counter() - interval_start
            train_seconds, trained_steps = train_seconds + interval, trained_steps + len(pending)
            last_train_loss = float(losses.mean())
            row = {
                "step": step,
                "tokens": step * tokens_per_step,
                "wall": wall(),
                "train_loss": last_train_loss,
                "lr": pending[-1]["lr"],
                "grad_norm": float(norms[-1]),
                "tokens_per_s": len(pending) * tokens_per_step / interval,
            }
            log.write(row)
            bar.update(len(pending))
            bar.set_postfix(loss=f"{last_train_loss:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
            pending = []

            if step % config.eval_every == 0 or step == config.max_steps:
                last_val_loss = _evaluate(params, data, config, step_config.autocast, device)
                log.write({"step": step, "tokens": step * tokens_per_step, "wall": wall(), "val_loss": last_val_loss})
                bar.write(f"step {step}: train loss {last_train_loss:.4f}, val loss {last_val_loss:.4f}")
            good = _Snapshot(step, params, opt_state, capture_rng(data_generator), wall())
            if step % config.checkpoint_every == 0 or stopping:
                save(LAST, good)
            if stopping and step < config.max_steps:
                status, message = "interrupted", f"interrupted at step {step}; checkpoint saved to {checkpoint_path(run_dir)}"
                break
            interval_start = time.perf_counter()  # evaluation and checkpointing are not training time

    if status == "completed":
        save(LAST, good)
        save(FINAL, good)
        message = f"finished {step} steps; final checkpoint {checkpoint_path(run_dir, FINAL)}"
    summary = {
        "status": status,
        "step": good.step,
        "tokens": good.step * tokens_per_step,
        "wall": wall(),
        "train_loss": last_train_loss,
        "val_loss": last_val_loss,
        "tokens_per_s": trained_steps * tokens_per_step / train_seconds if train_seconds else None,
        "parameters": count_params(config.model),
        "message": message,
    }
    (run_dir / SUMMARY_FILE).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(message, file=sys.stderr)
    if status == "completed" and data.tokenizer is not None and config.samples:
        _write_samples(run_dir, params, config, data.tokenizer)
    return run_dir


@dataclass(frozen=True)
class _Data:
    train: np.ndarray  # memory-mapped token ids
    valid: np.ndarray
    valid_starts: np.ndarray  # the fixed validation windows
    tokenizer: Tokenizer | None


def _open_data(config: TrainConfig, run_dir: Path) -> _Data:
    """Token files checked against the vocabulary; the tokenizer copied into the run, when known,
    so that the run decodes on its own."""
    files = prepare_data(config)
    train_tokens, valid_tokens = open_tokens(files.train), open_tokens(files.valid)
    for path, tokens in ((files.train, train_tokens), (files.valid, valid_tokens)):
        check_tokens(tokens, config.model.vocab_size, name=str(path))
    if files.tokenizer is not None and not (run_dir / TOKENIZER_DIR).exists():
        shutil.copytree(files.tokenizer, run_dir / TOKENIZER_DIR)
    tokenizer = Tokenizer.load(run_dir / TOKENIZER_DIR) if (run_dir / TOKENIZER_DIR).is_dir() else None
    if tokenizer is not None and len(tokenizer.vocab) < config.model.vocab_size:
        print(f"note: the tokenizer has {len(tokenizer.vocab)} tokens, fewer than vocab_size {config.model.vocab_size} "
              "(its training text ran out of pairs to merge); the extra embedding rows stay untrained", file=sys.stderr)
    starts = eval_starts(len(valid_tokens), config.model.context_length, config.eval_windows)
    return _Data(train_tokens, valid_tokens, starts, tokenizer)


def _evaluate(params: Any, data: _Data, config: TrainConfig, autocast: Any, device: torch.device) -> float:
    """Mean loss over the fixed validation windows."""
    total = 0.0
    with torch.inference_mode():
        for x, y in eval_batches(data.valid, data.valid_starts, config.batch_size, config.model.context_length, device):
            total += loss_fn(params, x, y, config.model, autocast).item() * len(x)
    return total / len(data.valid_starts)


def _first_non_finite(losses: torch.Tensor, norms: torch.Tensor) -> tuple[int, str] | None:
    """Index of the first step whose loss or gradient norm is not finite, and which one it was."""
    for index, (loss, norm) in enumerate(zip(losses.tolist(), norms.tolist())):
        if not math.isfinite(loss):
            return index, "loss"
        if not math.isfinite(norm):
            return index, "gradient norm"
    return None


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """SIGINT/SIGTERM ask the loop to stop at the end of the current step (it then checkpoints);
    a second SIGINT interrupts at once. Signals can only be caught on the main thread, so a run
    started from another thread (e.g. by a sweep) keeps the default behaviour."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _saved_state(run_dir: Path, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    saved = load_training_state(path, device)
    saved_model = ModelConfig.from_dict(saved["model_config"])
    if saved_model != config.model:
        changed = [k for k, v in config.model.to_dict().items() if saved_model.to_dict()[k] != v]
        raise ValueError(f"--resume: the model config differs from the checkpoint {path} in {changed}")
    return saved


def _write_samples(run_dir: Path, params: Any, config: TrainConfig, tokenizer: Tokenizer) -> None:
    stories = sample_stories(
        params, config.model, tokenizer, config.sample_prompt, config.samples, config.sample_tokens,
        config.sample_temperature, config.sample_top_p, seed=config.seed,
    )
    text = "\n\n---\n\n".join(stories)
    (run_dir / SAMPLES_FILE).write_text(text + "\n", encoding="utf-8")
    print(f"\nsamples (temperature {config.sample_temperature}, top-p {config.sample_top_p}):\n\n{text}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.training.loop",
        description="Train a Transformer LM. Config: preset < --config FILE < flags and --set.",
    )
    parser.add_argument("dataset", nargs="?", default="tinystories", help="dataset whose presets to use (tinystories)")
    parser.add_argument("--preset", default="baseline", help="baseline (the handout's) or cpu-small")
    parser.add_argument("--config", help="a JSON config (e.g. a run's config.json) applied over the preset")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from checkpoints/last.pt")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        overrides = overrides_from_args(args)
        if args.resume:
            if "run_dir" not in overrides:
                parser.error("--resume needs --run-dir DIR")
            config_file = args.config or Path(overrides["run_dir"]) / CONFIG_FILE
            config = resolve_config(args.dataset, args.preset, overrides, config_file=config_file)
        else:
            config = resolve_config(args.dataset, args.preset, overrides, config_file=args.config)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    try:
        run_dir = train(config, resume=args.resume)
    except (OSError, ValueError, ImportError) as error:  # missing data, occupied run dir, bad tokens...
        print(f"error: {error}", file=sys.stderr)
        return 1
    status = orjson.loads((run_dir / SUMMARY_FILE).read_bytes())["status"]
    if status == "interrupted":
        print(f"resume with: just train --resume --run-dir {run_dir}", file=sys.stderr)
    return {"completed": 0, "interrupted": 130, "diverged": 1}[status]


if __name__ == "__main__":
    sys.exit(main())
