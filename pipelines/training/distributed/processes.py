"""Data parallelism on torch.distributed: who this process is, and the few collectives the loop needs.

Processes are started by torchrun (`just train ... --nproc N`, which checks everything first and
runs torchrun's agent itself: pipelines/training/distributed/launch.py; or by hand,
`.venv/bin/torchrun --nproc_per_node N -m pipelines.training.cli ...`), which sets RANK,
WORLD_SIZE and LOCAL_RANK; each process first sets itself up as a worker (worker.py). Without them the run
is one process and every function here is a no-op. The backend follows the device: NCCL on CUDA
(each process pinned to GPU LOCAL_RANK), gloo on the CPU. Every process holds the whole model;
the gradient average is pipelines/training/distributed/grad_sync.py.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core.tree import Tree, tree_leaves


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that logs, writes checkpoints and speaks to the user."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Processes()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def start_processes(device: torch.device, timeout_s: float) -> tuple[Processes, torch.device]:
    """Join the process group torchrun set up (or stay one process); returns this process and its
    device, CUDA pinned to LOCAL_RANK. A collective that waits `timeout_s` for a dead peer fails."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return SINGLE, device
    processes = Processes(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None)
    return processes, device


def stop_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_tree(tree: Tree, processes: Processes) -> None:
    """Overwrite every tensor leaf of `tree` with rank 0's, in place."""
    if processes.distributed:
        works = [dist.broadcast(leaf, src=0, async_op=True) for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]
        for work in works:
            work.wait()


def broadcast_object(value: Any, processes: Processes) -> Any:
    """Rank 0's `value` (any picklable object) on every process."""
    if not processes.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_process(flag: bool, processes: Processes, device: torch.device) -> bool:
    """True on every process when `flag` is true on any (e.g. a signal one of them received)."""
    if not processes.distributed:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_processes(values: list[float], processes: Processes, device: torch.device) -> list[float]:
    if not processes.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
