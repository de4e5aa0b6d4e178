"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training"): B_simple = tr(Σ) / |G|², a measure of the critical batch size.

G is the true (whole-distribution) gradient and Σ the covariance of one example's gradient (here
one sequence's). A gradient averaged over B examples has E|g_B|² = |G|² + tr(Σ)/B, so squared
norms measured at two batch sizes B_small < B_big give both unknowns (the paper's appendix A.1):

    |G|²  ≈ (B_big·|g_big|² − B_small·|g_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|g_small|² − |g_big|²) / (1/B_small − 1/B_big)

Each step's two estimates are unbiased but very noisy (|G|² may even come out negative), and their
ratio would be biased, so we keep an exponential moving average of each and divide the averages,
as gpt-neox does. The averages start at zero and are divided by 1 − β^n (as Adam's moments), so
the first steps are plain means rather than one step's noise.

The trainer (`--gns true`, pipelines/training/run/loop.py) takes B_small = one micro-batch and B_big =
the whole step's batch over every micro-batch and process: the step already computes both
gradients, and pays one extra squared norm per micro-batch.
"""

import math
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim import foreach

# Per step: the averages span about 1/(1 − β) = 100 steps (gpt-neox's default).
BETA = 0.99


def squared_norm(leaves: list[Tensor]) -> Float[Tensor, ""]:
    """|g|² over all leaves together, as a tensor on their device (no host sync)."""
    return torch.stack(foreach.norms(leaves)).square().sum()


def two_batch_estimates(
    small_sq: Float[Tensor, "*steps"], big_sq: Float[Tensor, "*steps"], b_small: int, b_big: int
) -> tuple[Float[Tensor, "*steps"], Float[Tensor, "*steps"]]:
    """Unbiased estimates (|G|², tr Σ) from the squared norms of gradients averaged over `b_small`
    and `b_big` examples."""
    if not 0 < b_small < b_big:
        raise ValueError(f"the two batch sizes must satisfy 0 < b_small < b_big, got {b_small} and {b_big}")
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return grad_sq, trace


class NoiseScale(NamedTuple):
    """Moving averages of the two estimates; `weight` is 1 − β^n after n steps."""

    grad_sq: float = 0.0
    trace: float = 0.0
    weight: float = 0.0

    def updated(self, grad_sq: Float[Tensor, " steps"], trace: Float[Tensor, " steps"], beta: float = BETA) -> "NoiseScale":
        """The averages after these steps' estimates, in order (on the host: a few floats)."""
        mean_sq, mean_trace, weight = self
        for step_sq, step_trace in zip(grad_sq.tolist(), trace.tolist(), strict=True):
            mean_sq = beta * mean_sq + (1 - beta) * step_sq
            mean_trace = beta * mean_trace + (1 - beta) * step_trace
            weight = beta * weight + (1 - beta)
        return NoiseScale(mean_sq, mean_trace, weight)

    def readout(self) -> dict[str, float | None]:
        """The metrics rows' keys: |G|², tr Σ and their ratio B_simple (None while |G|² is not
        yet positive, when the ratio means nothing)."""
        if self.weight == 0:
            return {"gns_b_simple": None, "gns_grad_sq": None, "gns_trace": None}
        grad_sq, trace = self.grad_sq / self.weight, self.trace / self.weight
        b_simple = trace / grad_sq if grad_sq > 0 and math.isfinite(trace) else None
        return {"gns_b_simple": b_simple, "gns_grad_sq": grad_sq, "gns_trace": trace}
