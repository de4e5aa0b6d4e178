"""Optimizers as gradient transformations, optax style (see core/optim/base.py)."""

from core.optim.adam import ScaleByAdamState, scale_by_adam
from core.optim.adamw import adamw
from core.optim import foreach
from core.optim.base import EmptyState, GradientTransformation, apply_updates, chain, global_norm, hyperparameter, set_to_zero
from core.optim.clip import clip_by_global_norm, clip_scale
from core.optim.foreach import Scalar
from core.optim.learning_rate import Schedule, ScaleByLearningRateState, scale_by_learning_rate
from core.optim.muon import ScaleByMuonState, muon, newton_schulz, scale_by_muon
from core.optim.partition import PartitionState, muon_labels, partition
from core.optim.weight_decay import Mask, add_decayed_weights, decay_matrices

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "Mask",
    "PartitionState",
    "Scalar",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "ScaleByMuonState",
    "Schedule",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "clip_scale",
    "decay_matrices",
    "foreach",
    "global_norm",
    "hyperparameter",
    "muon",
    "muon_labels",
    "newton_schulz",
    "partition",
    "scale_by_adam",
    "scale_by_learning_rate",
    "set_to_zero",
    "scale_by_muon",
]
