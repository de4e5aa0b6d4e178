"""The data-parallel gradient average, bucketed and overlapped with the backward pass.

DDP does this for nn.Modules; our gradients are a pytree returned by a pure function, so the
average is done here with torch.distributed collectives, as core/train_step.py's `GradSync`.
Leaves are packed, in reverse order (the backward pass produces the last layers' gradients first),
into flat buckets of about `bucket_bytes`. With autograd gradients, a hook on each leaf copies its
gradient into its bucket as soon as backward produces it, and a full bucket starts an asynchronous
all-reduce while backward goes on; torch.func never calls tensor hooks, so its buckets all start
once its gradients are complete. Tied embeddings are one leaf, so they reduce once. ReduceOp.AVG
exists only on NCCL: the sum is divided by the number of processes and micro-batches instead.
"""

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from core.train_step import GradHook


@dataclass
class _Bucket:
    buffer: Tensor  # the flat gradients of its leaves
    leaves: list[int]
    pending: int = 0  # leaves not yet copied in this step
    work: dist.Work | None = None


class BucketedGradSync:
    """`overlap=False` waits for the whole backward before the first all-reduce (for comparison);
    `wait_seconds` adds up the time spent blocked on the collectives."""

    def __init__(self, params: list[Tensor], bucket_bytes: int, group: dist.ProcessGroup | None = None, overlap: bool = True) -> None:
        self.group, self.world, self.overlap = group, dist.get_world_size(group), overlap
        self.wait_seconds = 0.0
        self.buckets: list[_Bucket] = []
        self.slots: list[tuple[_Bucket, Tensor]] = [None] * len(params)  # type: ignore[list-item]
        current, size = [], 0
        for index in reversed(range(len(params))):
            leaf = params[index]
            if current and (leaf.dtype != params[current[0]].dtype or size >= bucket_bytes):
                self._add_bucket(params, current)
                current, size = [], 0
            current.append(index)
            size += leaf.numel() * leaf.element_size()
        if current:
            self._add_bucket(params, current)
        self.partial: list[Tensor] | None = None
        self.copied = [False] * len(params)

    def _add_bucket(self, params: list[Tensor], leaves: list[int]) -> None:
        first = params[leaves[0]]
        buffer = torch.empty(sum(params[i].numel() for i in leaves), dtype=first.dtype, device=first.device)
        bucket, offset = _Bucket(buffer, leaves), 0
        for i in leaves:
            self.slots[i] = (bucket, buffer[offset : offset + params[i].numel()].view(params[i].shape))
            offset += params[i].numel()
        self.buckets.append(bucket)

    def start(self, partial: list[Tensor] | None) -> GradHook:
        self._reset(partial)
        return self._copy if self.overlap else lambda index, grad: None

    def finish(self, grads: list[Tensor], loss: Tensor, micro_batches: int) -> tuple[list[Tensor], Tensor]:
        if not any(self.copied):  # no hooks ran (torch.func): every leaf goes in now
            self._reset(None)
        for index, grad in enumerate(grads):
            if not self.copied[index]:  # a leaf whose hook did not fire: unused by the loss, or torch.func
                self._copy(index, grad, summed=True)
        loss = loss.detach().clone()
        loss_work = dist.all_reduce(loss, group=self.group, async_op=True)
        scale = 1.0 / (self.world * micro_batches)
        started = time.perf_counter()
        for bucket in self.buckets:
            bucket.work.wait()
        loss_work.wait()
        self.wait_seconds += time.perf_counter() - started
        for bucket in self.buckets:
            bucket.buffer.mul_(scale)
        self.copied = [False] * len(self.copied)
        return [view for _, view in self.slots], loss * scale

    def _reset(self, partial: list[Tensor] | None) -> None:
        self.partial, self.copied = partial, [False] * len(self.copied)
        for bucket in self.buckets:
            bucket.pending, bucket.work = len(bucket.leaves), None

    def _copy(self, index: int, grad: Tensor, summed: bool = False) -> None:
        """Put leaf `index`'s gradient (plus the earlier micro-batches', unless already `summed`) in
        its bucket; the bucket's last leaf starts its all-reduce."""
        bucket, view = self.slots[index]
        view.copy_(grad)
        if self.partial is not None and not summed:
            view.add_(self.partial[index])
        self.copied[index] = True
        bucket.pending -= 1
        if bucket.pending == 0:
            bucket.work = dist.all_reduce(bucket.buffer, group=self.group, async_op=True)
