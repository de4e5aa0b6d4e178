"""`just sweep CONFIG --vary schedule.lr=1e-4,1e-3 --vmap`: the sweep's variants trained in this
process as stacked groups (pipelines/training/run/loop.py's train_variants), K models in one
batched computation, instead of one subprocess per variant.

The variants are split into groups that can train together: variants that differ only in their
seed and optimizer settings (pipelines/training/config/optimizer.py's why_not_stackable) and
resume from the same step (0 for a fresh start) share a group. A variant that stacks with no other
is left to the sweep, which trains it one by one as without --vmap, after a one-line notice. The
run directories are those of a sequential sweep, so skipping finished variants and resuming
interrupted ones work alike.
"""

import sys
from pathlib import Path

import orjson
import torch

from core.errors import UsageError
from pipelines.files.atomic import write_atomic
from pipelines.training.config.config import TrainConfig
from pipelines.training.config.optimizer import why_not_stackable
from pipelines.training.run.loop import train_variants
from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.storage.run_dir import SWEEP_CONFIG_FILE, checkpoint_path


def train_stacked(configs: dict[str, TrainConfig], threads: int | None = None) -> list[str]:
    """Train the variants `configs` (by name) that stack with another as stacked groups, with
    `threads` torch threads (default: torch's); the names it trained, or began to: the others are
    the caller's to train one by one."""
    groups = stackable_groups(configs)
    alone = [names[0] for names in groups if len(names) == 1]
    if alone:
        print(f"--vmap: {_why_alone(configs, alone)} one by one", file=sys.stderr)
    trained: list[str] = []
    if threads and len(alone) < len(configs):
        torch.set_num_threads(threads)
    for names in (names for names in groups if len(names) > 1):
        for name in names:
            record_request(configs[name])
        print(f"{', '.join(names)}: training as one group of {len(names)}", file=sys.stderr)
        trained += names
        try:
            resume = checkpoint_path(configs[names[0]].run_dir).exists()
            statuses = [status for _, status in train_variants([configs[name] for name in names], resume=resume)]
        except (UsageError, OSError) as error:  # busy directory, bad data or checkpoint: this group only
            statuses = [f"failed ({error})"] * len(names)
        for name, status in zip(names, statuses, strict=True):
            print(f"{name}: {status}", file=sys.stderr)
        if "interrupted" in statuses:  # a signal stopped the group: start no other, nor the lone variants
            return list(configs)
    return trained


def stackable_groups(configs: dict[str, TrainConfig]) -> list[list[str]]:
    """The variant names in groups that can train together, in the sweep's order: each variant
    joins the first group it stacks with and resumes from the same step as, else starts one."""
    groups: list[tuple[int, list[str]]] = []
    for name, config in configs.items():
        step = _resume_step(config)
        joined = next((names for at, names in groups if at == step and why_not_stackable([configs[names[0]], config]) is None), None)
        if joined is None:
            groups.append((step, [name]))
        else:
            joined.append(name)
    return [names for _, names in groups]


def _why_alone(configs: dict[str, TrainConfig], alone: list[str]) -> str:
    everyone = why_not_stackable(list(configs.values()))
    if len(alone) == len(configs) and everyone is not None:
        return f"{everyone}; training the variants"
    one = len(alone) == 1
    return (f"{', '.join(alone)} stack{'s' if one else ''} with no other variant (a different setting of the shared loop, "
            f"or a checkpoint at another step); training {'it' if one else 'them'}")


def _resume_step(config: TrainConfig) -> int:
    """The step a variant resumes from: its last checkpoint's, 0 without one."""
    path = checkpoint_path(config.run_dir)
    return read_train_state(path)["step"] if path.exists() else 0


def record_request(config: TrainConfig) -> Path:
    """Write sweep_config.json, the config the sweep asked this run for, into the run directory
    (made if absent); returns its path. Both sweeps, one by one and stacked, record it so."""
    requested = Path(config.run_dir) / SWEEP_CONFIG_FILE
    write_atomic(requested, orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2))
    return requested
