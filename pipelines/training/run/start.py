"""The start of a run, or of K variants trained together: every check before any work, then the
run directories, the data, the step and the first state, on one process or on each of several
(pipelines/training/distributed/processes.py).

With several processes the main one checks and prepares first (it may train a tokenizer and
encode text into the cache) and the others follow once it has; an error on the main process is
raised on every process, so none is left waiting. All start from the main process's state.

K variants each get what a run of their own gets (a lock, config.json, a copy of the tokenizer,
metrics.jsonl) and start from their own seeds, or all resume from their checkpoints at one step:
the group trains in lock-step.
"""

import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import orjson
import torch

from core.accounting import training_step_flops
from core.config import ModelConfig
from core.errors import UsageError
from core.stack import stack_trees
from core.train_state import TrainState, init_train_state, stack_states
from core.train_step import make_loss, make_train_step
from core.tree import tree_leaves
from params.init import count_params, init_params
from pipelines.files.atomic import remove_stale_temporaries, write_atomic
from pipelines.training.config.config import TrainConfig, with_overrides
from pipelines.training.config.optimizer import check_stackable, make_optimizer, make_schedule
from pipelines.training.data.prepare import TrainingData, open_training_data, with_run_tokenizer
from pipelines.training.distributed.grad_sync import BucketedGradSync
from pipelines.training.distributed.processes import Processes, broadcast_object, broadcast_tree, start_processes
from pipelines.training.distributed.sharding import Sharding
from pipelines.training.hardware.device import autocast_for, enable_tf32
from pipelines.training.hardware.device_check import require_device
from pipelines.training.hardware.fits import check_fits
from pipelines.training.hardware.peak import peak_flops
from pipelines.training.run.run import NoLog, Run
from pipelines.training.storage.checkpoint import load_train_state, read_train_state
from pipelines.training.storage.metrics import MetricsLog, import_wandb, start_wandb
from pipelines.training.storage.run_dir import CONFIG_FILE, FINAL, TOKENIZER_DIR, checkpoint_path, remove_if_unstarted
from pipelines.training.storage.run_lock import RunLock, check_run_dir_free, lock_run_dir

# On the CPU, vmap runs torch's fused attention kernel once per variant (it has no batching rule
# there), and torch warns about it; that is what K runs one by one do anyway. CUDA's fused kernels
# have batching rules, so only stacked steps and losses off CUDA are wrapped (MPS too, to be safe):
# catch_warnings costs every call and resets the once-only warning registry.
VMAP_FALLBACK_WARNING = "There is a performance drop because we have not yet implemented the batching rule"


def start(configs: Sequence[TrainConfig], *, resume: bool) -> tuple[Run, TrainState] | None:
    """Check everything that can be checked before any work, then take the run directories (locked
    for the life of the run), open the data, build the step, and initialise or load the state.
    None, after saying so, when `resume` finds every run already complete: nothing to do."""
    configs = tuple(configs)
    check_stackable(configs)  # before any work
    processes, device = start_processes(require_device(configs[0].device), configs[0].timeout_s)
    if configs[0].gns:
        configs[0].gns_batch_sizes(processes.world)  # refused here, before any work, without two sizes
    # The run directory's default name has the time in it: the main process's name for everyone.
    configs = broadcast_object(_on_main_first(processes, lambda: tuple(with_run_dir(c) for c in configs)), processes)
    saved = _on_main_first(processes, lambda: _check_runs(configs, resume, device))
    saved = saved if processes.main else _check_runs(configs, resume, device, main=False)
    if resume and broadcast_object(_complete(configs, saved, say=True) if processes.main else None, processes):
        return None
    checked = _on_main_first(processes, lambda: _open_data(configs, saved, main=True))
    # The others open what the main process checked (and cached), while it takes the run directory.
    data, wandb = checked if processes.main else _open_data(configs, saved, main=False)
    locks = _on_main_first(processes, lambda: _take_run_dirs(configs)) or ()  # the others hold none
    try:
        # The main process copies the tokenizer into each run directory; the others then only read it.
        copied = _on_main_first(processes, lambda: _with_run_tokenizers(data, configs))
        data = copied if processes.main else _with_run_tokenizers(data, configs)
        return _build_run(configs, device, processes, saved, data, wandb, locks)
    except BaseException:
        for config, lock in zip(configs, locks):
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
        raise UsageError(message)
    return result


def with_run_dir(config: TrainConfig) -> TrainConfig:
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return with_overrides(config, {"run_dir": str(run_dir)})


def check_before_work(config: TrainConfig, resume: bool, device: torch.device) -> None:
    """Every refusal a start of the one run `config` makes before writing anything (the run
    directory, the checkpoint, the model's memory, the data, wandb), as the launcher makes them once
    before starting any process; the data is prepared into the cache on the way."""
    saved = _check_runs((config,), resume, device)
    if not (resume and _complete((config,), saved)):
        _open_data((config,), saved, main=True)


def _check_runs(configs: tuple[TrainConfig, ...], resume: bool, device: torch.device, *, main: bool = True) -> list[dict | None]:
    """Each run's checkpoint to resume (None for a fresh start), after the refusals that need no
    data: a busy or occupied run directory, a model too big for the device, a checkpoint of
    another model, resumed variants at different steps or on different tokenizers. Only the `main`
    process, which writes, checks the run directories."""
    config = configs[0]
    if config.shard_optimizer and config.optim.name != "adamw":
        raise UsageError(f"--shard_optimizer shards AdamW's moments; optim.name is {config.optim.name!r}")
    if main:
        for one in configs:
            check_run_dir_free(Path(one.run_dir))
            if not resume and checkpoint_path(one.run_dir).exists():
                raise UsageError(f"{one.run_dir} already holds a run; pass --resume to continue it, or another --run_dir")
        check_fits(config, device)
    saved = [_read_checkpoint(Path(one.run_dir), one) if resume else None for one in configs]
    if len({s["step"] for s in saved if s is not None}) > 1:
        raise UsageError(f"the checkpoints of {[c.run_dir for c in configs]} are at different steps; resume them one by one")
    if len({s["tokenizer"] for s in saved if s is not None}) > 1:
        raise UsageError(f"the checkpoints of {[c.run_dir for c in configs]} record different tokenizers; resume them one by one")
    return saved


def _complete(configs: tuple[TrainConfig, ...], saved: list[dict | None], *, say: bool = False) -> bool:
    """Whether every resumed run has reached its max_steps and has its final checkpoint; if so,
    and with `say`, says so, one line per run."""
    done = all(s is not None and s["step"] >= c.max_steps and checkpoint_path(c.run_dir, FINAL).exists() for s, c in zip(saved, configs))
    if done and say:
        for config, one in zip(configs, saved, strict=True):
            print(f"{config.run_dir} is complete (step {one['step']} of max_steps {config.max_steps}); nothing to do. "
                  "Raise --max_steps to train it further.", file=sys.stderr)
    return done


def _open_data(configs: tuple[TrainConfig, ...], saved: list[dict | None], *, main: bool) -> tuple[TrainingData, object]:
    """The data, opened and checked once for every run (as the first run opens it: its tokenizer
    copy and its checkpoint's record, when resumed), and wandb: bad data and a tokenizer that does
    not match are refused here, before anything is written."""
    config, first = configs[0], saved[0]
    run_dir = Path(config.run_dir)
    wandb = import_wandb() if config.wandb and main else None  # a missing package fails here, before any work
    run_tokenizer = run_dir / TOKENIZER_DIR if first is not None and (run_dir / TOKENIZER_DIR).is_dir() else None
    return open_training_data(config, run_tokenizer, first["tokenizer"] if first else None), wandb


def _with_run_tokenizers(data: TrainingData, configs: tuple[TrainConfig, ...]) -> TrainingData:
    """`data` with its tokenizer copied into each run directory (each run its own copy); the first
    run's copy is the one the data reads from."""
    first = with_run_tokenizer(data, Path(configs[0].run_dir), configs[0].model.vocab_size)
    for config in configs[1:]:
        with_run_tokenizer(data, Path(config.run_dir), config.model.vocab_size)
    return first


def take_run_dir(config: TrainConfig) -> RunLock:
    """Create and lock the run directory, clear a killed writer's temporaries, write config.json."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    remove_stale_temporaries(run_dir)  # debris of a killed writer; the lock says none is alive
    write_atomic(run_dir / CONFIG_FILE, orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2))
    return lock


def _take_run_dirs(configs: tuple[TrainConfig, ...]) -> tuple[RunLock, ...]:
    """`take_run_dir` of each run, or of none: the locks taken are released if one fails."""
    locks: list[RunLock] = []
    try:
        for config in configs:
            locks.append(take_run_dir(config))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return tuple(locks)


def _read_checkpoint(run_dir: Path, config: TrainConfig) -> dict:
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise UsageError(f"--resume: no checkpoint at {path}")
    saved = read_train_state(path)
    changed = config.model.architecture_changes(ModelConfig.from_dict(saved["model_config"]))
    if changed:
        raise UsageError(f"--resume: the model config differs from the checkpoint {path} in {changed}")
    return saved


def _build_run(
    configs: tuple[TrainConfig, ...], device: torch.device, processes: Processes, saved: list[dict | None], data: TrainingData,
    wandb, locks: tuple[RunLock, ...],
) -> tuple[Run, TrainState]:
    config, stacked = configs[0], len(configs) > 1
    enable_tf32(device)
    optimizer = make_optimizer(configs)
    state = _first_states(configs, device, saved, optimizer) if stacked else _first_state(config, device, processes, saved[0], optimizer)
    sync = BucketedGradSync(tree_leaves(state.params), int(config.bucket_mb * 2**20)) if processes.distributed else None
    sharding = Sharding.of(state.params, processes) if config.shard_optimizer and processes.distributed else None
    if sharding is not None:
        state = state.replace(opt_state=sharding.split(state.opt_state))
    autocast = autocast_for(device)
    train_step = make_train_step(
        config.model, sharding.optimizer(config) if sharding else optimizer, grad_mode=config.grad_mode,  # type: ignore[arg-type]
        autocast=autocast, compile=config.compile, donate=True, accumulate=config.grad_accum, sync=sync, gns=config.gns,
        variants=stacked,
    )
    if sharding is not None:
        train_step = sharding.stepping(train_step)
    batch_loss, eval_loss = (make_loss(config.model, autocast, variants=stacked, shared_batch=shared) for shared in (False, True))
    if stacked and device.type != "cuda":  # CUDA's fused attention kernels have batching rules: no warning to hide
        train_step, batch_loss, eval_loss = _quiet(train_step), _quiet(batch_loss), _quiet(eval_loss)
    peak, source = peak_flops(device, autocast[1] if autocast else torch.float32)
    logs: tuple = (NoLog(),)
    if processes.main:
        wandb_run = start_wandb(wandb, config.wandb_project, Path(config.run_dir), config.to_dict()) if wandb else None
        logs = tuple(MetricsLog(Path(one.run_dir), wandb_run, step=state.step) for one in configs)  # rows after the checkpoint's step are cut
        _announce(configs, device, processes, peak, source, data, state.step, resumed=saved[0] is not None)
    tokenizer = data.tokenizer.fingerprint() if data.tokenizer else None
    run = Run(
        configs=configs, data=data, schedules=tuple(make_schedule(one) for one in configs),
        train_step=train_step, batch_loss=batch_loss, eval_loss=eval_loss,
        device=device, processes=processes, sharding=sharding, logs=logs,
        flops_per_step=training_step_flops(config.model, config.data.batch_size * config.grad_accum), peak_flops=peak,
        metas=tuple({"model_config": one.model.to_dict(), "train_config": one.to_dict(), "tokenizer": tokenizer} for one in configs),
        locks=locks,
    )
    return run, state


def _announce(
    configs: tuple[TrainConfig, ...], device: torch.device, processes: Processes, peak: float, source: str, data: TrainingData,
    step: int, *, resumed: bool,
) -> None:
    config = configs[0]
    what = f"{len(configs)} variants as one group" if len(configs) > 1 else str(config.run_dir)
    print(
        f"{'resuming' if resumed else 'training'} {what} on {device}"
        f"{f' x {processes.world} processes' if processes.distributed else ''} (peak {peak / 1e12:.3g} TFLOP/s, {source}): "
        f"{count_params(config.model):,} parameters{' each' if len(configs) > 1 else ''}, "
        f"{len(data.train):,} train / {len(data.valid):,} valid tokens, steps {step}..{config.max_steps}",
        file=sys.stderr,
    )


def _quiet(function):
    """`function` without vmap's warning that the CPU's fused attention runs once per variant."""

    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=VMAP_FALLBACK_WARNING)
            return function(*args, **kwargs)

    return quiet


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


def _first_states(configs: tuple[TrainConfig, ...], device: torch.device, saved: list[dict | None], optimizer) -> TrainState:
    """K variants, stacked. Fresh: each one's initial weights from its own seed, as its run alone
    draws them. Resumed: each one's checkpoint, loaded with its own optimizer as the template."""
    if saved[0] is None:
        params = stack_trees([init_params(c.model, torch.Generator().manual_seed(c.seed), device=device) for c in configs])
        return init_train_state(params, optimizer, rng=[c.seed for c in configs])
    states = [load_train_state(s, c.model, make_optimizer(c), device, source=checkpoint_path(c.run_dir)) for s, c in zip(saved, configs)]
    return stack_states(states)
