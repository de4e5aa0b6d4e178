"""`just sweep CONFIG --vary schedule.lr=1e-4,1e-3 --vmap`: the sweep's variants trained in this
process as stacked groups (pipelines/training/run/group_loop.py), K models in one batched computation,
instead of one subprocess per variant.

Variants that cannot be stacked (they differ in shape or in a setting of the shared loop:
pipelines/training/config/stackable.py) are trained one by one as without --vmap, after a one-line
notice. The run directories are those of a sequential sweep, so skipping finished variants and
resuming interrupted ones work alike: the variants to resume are grouped by the step of their
last checkpoint, and each group trains in lock-step from there.
"""

import sys
from pathlib import Path

import orjson
import torch

from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.config.config import TrainConfig
from pipelines.training.run.group_loop import train_group
from pipelines.training.storage.run_dir import SWEEP_CONFIG_FILE, checkpoint_path
from pipelines.training.config.stackable import why_not_stackable
from pipelines.files.atomic import write_atomic


def train_stacked(configs: dict[str, TrainConfig], threads: int | None = None) -> bool:
    """Train the variants `configs` (by name) as stacked groups, `threads` torch threads (default:
    torch's); False, after the notice, when they cannot be stacked and nothing was trained."""
    reason = why_not_stackable(list(configs.values()))
    if reason is not None:
        print(f"--vmap: {reason}; training the variants one by one", file=sys.stderr)
        return False
    if threads:
        torch.set_num_threads(threads)
    for step, names in sorted(_groups_by_step(configs).items()):
        for name in names:
            _record_request(configs[name])
        print(f"{', '.join(names)}: training as one group of {len(names)} from step {step}", file=sys.stderr)
        try:
            statuses = train_group([configs[name] for name in names])
        except (OSError, ValueError) as error:  # busy directory, bad data or checkpoint: this group only
            statuses = [f"failed ({error})"] * len(names)
        for name, status in zip(names, statuses, strict=True):
            print(f"{name}: {status}", file=sys.stderr)
        if "interrupted" in statuses:  # a signal stopped the group: start no other
            break
    return True


def _groups_by_step(configs: dict[str, TrainConfig]) -> dict[int, list[str]]:
    """Variant names by the step they resume from (0: no checkpoint yet)."""
    groups: dict[int, list[str]] = {}
    for name, config in configs.items():
        path = checkpoint_path(config.run_dir)
        step = read_train_state(path)["step"] if path.exists() else 0
        groups.setdefault(step, []).append(name)
    return groups


def _record_request(config: TrainConfig) -> None:
    """sweep_config.json, the config the sweep asked this run for, as a sequential sweep writes it."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / SWEEP_CONFIG_FILE, orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2))
