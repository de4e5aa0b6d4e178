"""Sharded optimizer state (ZeRO stage 1) for data-parallel AdamW: `--shard_optimizer true`.

Every process holds the whole model and the whole averaged gradient, but only the AdamW moments of
its own share of the leaves (shares balanced greedily by size), so optimizer memory per process is
about 1/N. Each process updates its own leaves (`partition` routes the others to `set_to_zero`),
then every leaf is broadcast from its owner. Clipping still sees all the gradients.

Checkpoints stay those of unsharded AdamW: the moments are gathered to the main process before a
save, and a start or resume splits the full state, so a sharded run resumes at any number of
processes, sharded or not. (Gathering and splitting hold the full moments for a moment.)
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.optim import GradientTransformation, chain, clip_by_global_norm, partition, set_to_zero
from core.optim.partition import PartitionState
from core.train_state import TrainState
from core.train_step import TrainStep
from core.tree import Tree, tree_flatten, tree_unflatten
from pipelines.training.config.config import TrainConfig
from pipelines.training.distributed.processes import Processes
from pipelines.training.config.optimizer import make_adamw

OWN, OTHER = "own", "other"


def balanced_owners(sizes: list[int], world: int) -> list[int]:
    """The process owning each leaf: largest leaves first, each to the least loaded process."""
    loads, owners = [0] * world, [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        owner = min(range(world), key=lambda rank: loads[rank])
        owners[index], loads[owner] = owner, loads[owner] + sizes[index]
    return owners


@dataclass(frozen=True)
class Sharding:
    processes: Processes
    owners: list[int]  # by leaf, in the params' tree order
    spec: object  # the params' tree structure

    @classmethod
    def of(cls, params: Tree, processes: Processes) -> "Sharding":
        leaves, spec = tree_flatten(params)
        return cls(processes, balanced_owners([leaf.numel() for leaf in leaves], processes.world), spec)

    def mine(self) -> list[int]:
        return [i for i, owner in enumerate(self.owners) if owner == self.processes.rank]

    def optimizer(self, config: TrainConfig) -> GradientTransformation:
        """Clipping over all leaves, then AdamW on this process's leaves and nothing on the others'."""
        labels = tree_unflatten([OWN if owner == self.processes.rank else OTHER for owner in self.owners], self.spec)
        routed = partition({OWN: make_adamw(config), OTHER: set_to_zero()}, labels)
        return chain(clip_by_global_norm(config.optim.max_grad_norm), routed)

    def split(self, full: tuple) -> tuple:
        """Unsharded chain(clip, adamw) state -> this process's sharded one."""
        clip_state, (adam, decay, lr) = full
        mine = self.mine()
        mu, nu = tree_flatten(adam.mu)[0], tree_flatten(adam.nu)[0]
        own = (adam._replace(mu=[mu[i] for i in mine], nu=[nu[i] for i in mine]), decay, lr)
        return clip_state, PartitionState({OWN: own, OTHER: set_to_zero().init(None)})

    def gathered(self, state: TrainState) -> TrainState:
        """The state with the unsharded optimizer state (every process takes part; the moments are
        complete on every process afterwards, for the main one to save)."""
        clip_state, routed = state.opt_state
        adam, decay, lr = routed.inner_states[OWN]
        params = tree_flatten(state.params)[0]
        position = {index: k for k, index in enumerate(self.mine())}
        mu, nu = [], []
        for index, (owner, param) in enumerate(zip(self.owners, params, strict=True)):
            for mine, out in ((adam.mu, mu), (adam.nu, nu)):
                buffer = mine[position[index]].clone() if owner == self.processes.rank else torch.empty_like(param)
                dist.broadcast(buffer, src=owner)
                out.append(buffer)
        full_adam = adam._replace(mu=tree_unflatten(mu, self.spec), nu=tree_unflatten(nu, self.spec))
        return state.replace(opt_state=(clip_state, (full_adam, decay, lr)))

    def stepping(self, step: TrainStep) -> TrainStep:
        """`step`, then every leaf broadcast from the process that updated it."""

        def sharded_step(state: TrainState, batch) -> tuple[TrainState, dict]:
            state, metrics = step(state, batch)
            if metrics["applied"]:
                leaves = tree_flatten(state.params)[0]
                works = [dist.broadcast(leaf, src=owner, async_op=True) for leaf, owner in zip(leaves, self.owners, strict=True)]
                for work in works:
                    work.wait()
            return state, metrics

        return sharded_step
