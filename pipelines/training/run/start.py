"""The start of a run: every check before any work, then the run directory, the data, the step and
the first state, on one process or on each of several (pipelines/training/distributed/processes.py).

With several processes the main one checks and prepares first (it may train a tokenizer and
encode text into the cache) and the others follow once it has; an error on the main process is
raised on every process, so none is left waiting. All start from the main process's state.
"""

import sys
import time
from pathlib import Path

import orjson
import torch

from core.accounting import training_step_flops
from core.errors import UsageError
from core.config import ModelConfig
from core.train_state import TrainState, init_train_state
from core.train_step import make_train_step
from core.tree import tree_leaves
from params.init import count_params, init_params
from pipelines.files.atomic import remove_stale_temporaries, write_atomic
from pipelines.training.storage.checkpoint import load_train_state, read_train_state
from pipelines.training.config.config import TrainConfig, with_overrides
from pipelines.training.hardware.device import autocast_for, enable_tf32
from pipelines.training.hardware.device_check import require_device
from pipelines.training.distributed.processes import Processes, broadcast_object, broadcast_tree, start_processes
from pipelines.training.hardware.fits import check_fits
from pipelines.training.distributed.grad_sync import BucketedGradSync
from pipelines.training.storage.metrics import MetricsLog, import_wandb, start_wandb
from pipelines.training.config.optimizer import make_optimizer, make_schedule
from pipelines.training.hardware.peak import peak_flops
from pipelines.training.data.prepare import TrainingData, open_training_data, with_run_tokenizer
from pipelines.training.run.run import NoLog, Run
from pipelines.training.storage.run_dir import CONFIG_FILE, TOKENIZER_DIR, checkpoint_path, remove_if_unstarted
from pipelines.training.storage.run_lock import RunLock, check_run_dir_free, lock_run_dir
from pipelines.training.distributed.sharding import Sharding


def start(config: TrainConfig, *, resume: bool) -> tuple[Run, TrainState]:
    """Check everything that can be checked before any work, then take the run directory (locked
    for the life of the run), open the data, build the step, and initialise or load the state."""
    processes, device = start_processes(require_device(config.device), config.timeout_s)
    if config.gns:
        config.gns_batch_sizes(processes.world)  # refused here, before any work, without two sizes
    # The run directory's default name has the time in it: the main process's name for everyone.
    config = broadcast_object(_on_main_first(processes, lambda: with_run_dir(config)), processes)
    checked = _on_main_first(processes, lambda: check_before_work(config, resume, device))
    # The others open what the main process checked (and cached), while it takes the run directory.
    saved, data, wandb = checked if processes.main else check_before_work(config, resume, device, main=False)
    lock = _on_main_first(processes, lambda: take_run_dir(config))
    try:
        # The main process copies the tokenizer into the run directory; the others then only read it.
        copied = _on_main_first(processes, lambda: with_run_tokenizer(data, Path(config.run_dir), config.model.vocab_size))
        data = copied if processes.main else with_run_tokenizer(data, Path(config.run_dir), config.model.vocab_size)
        return _build_run(config, device, processes, saved, data, wandb, lock)
    except BaseException:
        if lock is not None:
            remove_if_unstarted(config.run_dir)  # a start that fails leaves no run directory
            lock.release()
        raise


def _on_main_first(processes: Processes, work):
    """`work()`'s result on the main process (None on the others), after which every process
    raises the error it raised, if any: no process is left waiting for one that failed."""
    result, error = None, None
    if processes.main:
        try:
            result = work()
        except (OSError, ValueError, ImportError) as caught:
            error = caught
    message = broadcast_object(None if error is None else str(error), processes)
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(message)
    return result


def with_run_dir(config: TrainConfig) -> TrainConfig:
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return with_overrides(config, {"run_dir": str(run_dir)})


def check_before_work(
    config: TrainConfig, resume: bool, device: torch.device, *, main: bool = True
) -> tuple[dict | None, TrainingData, object]:
    """The checkpoint to resume, the data and wandb; every refusal (busy or occupied run directory,
    a model too big for the device, bad data, a tokenizer that does not match) happens here,
    before anything is written. Only the `main` process, which writes, checks the run directory."""
    run_dir = Path(config.run_dir)
    if config.shard_optimizer and config.optim.name != "adamw":
        raise UsageError(f"--shard_optimizer shards AdamW's moments; optim.name is {config.optim.name!r}")
    if main:
        check_run_dir_free(run_dir)
        check_fits(config, device)
        if not resume and checkpoint_path(run_dir).exists():
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or another --run_dir")
    saved = _read_checkpoint(run_dir, config) if resume else None
    wandb = import_wandb() if config.wandb and main else None  # a missing package fails here, before any work
    run_tokenizer = run_dir / TOKENIZER_DIR if resume and (run_dir / TOKENIZER_DIR).is_dir() else None
    data = open_training_data(config, run_tokenizer, saved["tokenizer"] if saved else None)
    return saved, data, wandb


def take_run_dir(config: TrainConfig) -> RunLock:
    """Create and lock the run directory, clear a killed writer's temporaries, write config.json."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    remove_stale_temporaries(run_dir)  # debris of a killed writer; the lock says none is alive
    write_atomic(run_dir / CONFIG_FILE, orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2))
    return lock


def _read_checkpoint(run_dir: Path, config: TrainConfig) -> dict:
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    saved = read_train_state(path)
    changed = config.model.architecture_changes(ModelConfig.from_dict(saved["model_config"]))
    if changed:
        raise ValueError(f"--resume: the model config differs from the checkpoint {path} in {changed}")
    return saved


def _build_run(
    config: TrainConfig, device: torch.device, processes: Processes, saved: dict | None, data: TrainingData, wandb, lock: RunLock | None
) -> tuple[Run, TrainState]:
    run_dir = Path(config.run_dir)
    enable_tf32(device)
    optimizer = make_optimizer(config)
    state = _first_state(config, device, processes, saved, optimizer)
    sync = BucketedGradSync(tree_leaves(state.params), int(config.bucket_mb * 2**20)) if processes.distributed else None
    sharding = Sharding.of(state.params, processes) if config.shard_optimizer and processes.distributed else None
    if sharding is not None:
        state = state.replace(opt_state=sharding.split(state.opt_state))
    autocast = autocast_for(device)
    step = make_train_step(
        config.model, sharding.optimizer(config) if sharding else optimizer, grad_mode=config.grad_mode,  # type: ignore[arg-type]
        autocast=autocast, compile=config.compile, donate=True, accumulate=config.grad_accum, sync=sync, gns=config.gns,
    )
    if sharding is not None:
        step = sharding.stepping(step)
    peak, source = peak_flops(device, autocast[1] if autocast else torch.float32)
    log = NoLog()
    if processes.main:
        wandb_run = start_wandb(wandb, config.wandb_project, run_dir, config.to_dict()) if wandb else None
        log = MetricsLog(run_dir, wandb_run, step=state.step)  # rows after the checkpoint's step are cut
        print(
            f"{'resuming' if saved else 'training'} {run_dir} on {device}"
            f"{f' x {processes.world} processes' if processes.distributed else ''} (peak {peak / 1e12:.3g} TFLOP/s, {source}): "
            f"{count_params(config.model):,} parameters, {len(data.train):,} train / {len(data.valid):,} valid tokens, "
            f"steps {state.step}..{config.max_steps}",
            file=sys.stderr,
        )
    meta = {
        "model_config": config.model.to_dict(),
        "train_config": config.to_dict(),
        "tokenizer": data.tokenizer.fingerprint() if data.tokenizer else None,
    }
    flops = training_step_flops(config.model, config.data.batch_size * config.grad_accum)
    run = Run(config, run_dir, data, optimizer, make_schedule(config), step, autocast, device, processes, sharding, log, flops, peak, meta, lock)
    return run, state


def _first_state(config: TrainConfig, device: torch.device, processes: Processes, saved: dict | None, optimizer) -> TrainState:
    """A fresh or resumed state; with several processes, the main process's on all of them."""
    if saved is None:
        params = init_params(config.model, torch.Generator().manual_seed(config.seed), device=device)
        state = init_train_state(params, optimizer, rng=config.seed)
    else:
        state = load_train_state(saved, config.model, optimizer, device, source=checkpoint_path(config.run_dir))
    broadcast_tree((state.params, state.opt_state), processes)  # its tensors; the step counts are the same
    step, rng, elapsed = broadcast_object((state.step, state.rng, state.elapsed), processes)
    return state.replace(step=step, rng=rng, elapsed=elapsed)
