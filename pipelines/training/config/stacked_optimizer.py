"""The stacked optimizer of K TrainConfigs that differ only in their optimizer settings: for each
variant k, what make_optimizer(configs[k]) does to variant k alone (pipelines/training/config/optimizer.py)."""

from collections.abc import Sequence

from core.optim import GradientTransformation, chain, decay_matrices
from core.optim.stacked import as_variant_values
from core.optim.stacked_adamw import stacked_adamw
from core.optim.stacked_clip import stacked_clip_by_global_norm
from core.stacked_schedule import stack_schedules
from pipelines.training.config.config import TrainConfig
from pipelines.training.config.optimizer import make_schedule


def make_stacked_optimizer(configs: Sequence[TrainConfig]) -> GradientTransformation:
    """Clip each variant by its global norm, then AdamW on its own schedule, betas, eps and decay.
    AdamW only: Muon's orthogonalisation is not stacked (a Muon sweep runs one by one)."""
    names = {config.optim.name for config in configs}
    if names != {"adamw"}:
        raise ValueError(f"make_stacked_optimizer: the stacked optimizer is AdamW, got optim.name {sorted(names)}")
    if len({config.optim.decay_gains for config in configs}) != 1:
        raise ValueError("make_stacked_optimizer: optim.decay_gains must be the same for every variant")
    schedule = stack_schedules([make_schedule(config) for config in configs])  # each variant's own

    def values(name: str):
        return as_variant_values([getattr(c.optim, name) for c in configs])

    adam = stacked_adamw(
        schedule, values("beta1"), values("beta2"), values("eps"), values("weight_decay"),
        mask=None if configs[0].optim.decay_gains else decay_matrices,
    )
    return chain(stacked_clip_by_global_norm(values("max_grad_norm")), adam)
