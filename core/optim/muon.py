"""Muon (Keller Jordan, 2024; modded-nanogpt): momentum, then the nearest semi-orthogonal matrix.

For one weight matrix with gradient g (rows x cols), momentum mu and buffer m (zeros at first):

    m_t = mu m_{t-1} + g                               the momentum buffer (no dampening)
    d_t = g + mu m_t            with Nesterov,   d_t = m_t without
    u_t = max(1, rows / cols)^0.5 * NS(d_t)

NS(d) approximates U V^T for d = U S V^T, the orthogonal factor of d: every singular value is
pushed towards 1, so each direction of the update moves by about as much, however small its share
of the gradient. NS is 5 steps of a quintic Newton-Schulz iteration (`newton_schulz`) tuned for
speed rather than exactness: singular values at least 1/500 of the Frobenius norm land in
[0.68, 1.21], not on 1 (the quintic's range there is [0.6818, 1.2024], measured on a 2e6-point
grid; properties/test_muon_properties.py holds float32 to the band); smaller ones grow
~3.4445^5 ~ 490x.
With the factor max(1, rows/cols)^0.5 the update's entries have an RMS of about 1/sqrt(cols)
whether the matrix is tall or wide (unscaled, a tall one's would be 1/sqrt(rows)).

Muon is for the hidden 2-D matrices only; embeddings, the output head and gains go to AdamW
(`core/optim/partition.py` routes them). A leaf that is not 2-D is an error here. The output has
no sign and no learning rate: chain `scale_by_learning_rate`, as `muon` below does.
"""

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from core.optim import foreach
from core.optim.base import GradientTransformation, chain, leaves_like
from core.optim.learning_rate import Schedule, scale_by_learning_rate
from core.optim.weight_decay import Mask, add_decayed_weights
from core.tree import Tree, tree_flatten, tree_leaves, tree_map, tree_unflatten

# The quintic's coefficients: a large slope at 0 (a = 3.4445) pulls small singular values up fast;
# b and c keep the map of [0, 1] inside a band around 1 instead of converging to exactly 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


class ScaleByMuonState(NamedTuple):
    count: int  # updates made so far
    momentum: Tree  # the buffers m, shaped like the params


def newton_schulz(
    x: Float[Tensor, "*batch rows cols"], steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None
) -> Float[Tensor, "*batch rows cols"]:
    """An approximate orthogonal factor of each matrix of `x`, returned in x's dtype.

    X = x / (||x||_F + eps), then `steps` times X <- aX + (bA + cA^2)X with A = X X^T. Dividing by
    the Frobenius norm puts every singular value in [0, 1], where the quintic converges. A wide X
    keeps A small (rows x rows), so a tall matrix is transposed first. `dtype` defaults to bf16 on
    CUDA (the iteration tolerates its rounding and tensor cores run it fast), float32 elsewhere."""
    if dtype is None:
        dtype = torch.bfloat16 if x.is_cuda else torch.float32
    a, b, c = NS_COEFFICIENTS
    tall = x.shape[-2] > x.shape[-1]
    y = x.to(dtype).mT if tall else x.to(dtype)
    y = y / (torch.linalg.matrix_norm(y, keepdim=True) + eps)
    for _ in range(steps):
        gram = y @ y.mT
        y = a * y + (b * gram + c * (gram @ gram)) @ y
    return (y.mT if tall else y).to(x.dtype)


def scale_by_muon(
    momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None
) -> GradientTransformation:
    """Muon's direction for 2-D leaves (module docstring); `dtype` is newton_schulz's."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"scale_by_muon: momentum must lie in [0, 1), got {momentum!r}")
    if not ns_steps >= 1:
        raise ValueError(f"scale_by_muon: ns_steps must be at least 1, got {ns_steps!r}")

    def init(params: Tree) -> ScaleByMuonState:
        _check_matrices(tree_leaves(params))
        return ScaleByMuonState(0, tree_map(torch.zeros_like, params))

    def update(
        updates: Tree, state: ScaleByMuonState, params: Tree | None = None, *, donate: bool = False
    ) -> tuple[Tree, ScaleByMuonState]:
        grads, spec = tree_flatten(updates)
        _check_matrices(grads)
        buffers = leaves_like(state.momentum, spec, "scale_by_muon: state.momentum")
        if not grads:
            return updates, ScaleByMuonState(state.count + 1, state.momentum)
        buffers, directions = _momentum(grads, buffers, momentum, nesterov, donate)
        out = _orthogonalise(directions, ns_steps, eps, dtype)
        return tree_unflatten(out, spec), ScaleByMuonState(state.count + 1, tree_unflatten(buffers, spec))

    return GradientTransformation(init, update)


def muon(
    learning_rate: float | Schedule,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    mask: Mask | None = None,
    dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Muon with decoupled weight decay, as adamw.py builds AdamW: theta <- theta - lr (u + wd theta).
    The state is (ScaleByMuonState, EmptyState, ScaleByLearningRateState)."""
    return chain(
        scale_by_muon(momentum, nesterov, ns_steps, eps, dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def _momentum(
    grads: list[Tensor], buffers: list[Tensor], momentum: float, nesterov: bool, donate: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """(m_t, d_t) from g and m_{t-1}; with donate, m_{t-1}'s tensors become m_t and g's become d_t."""
    if donate:
        foreach.mul_(buffers, momentum)
    else:
        buffers = foreach.mul(buffers, momentum)
    foreach.add_(buffers, grads)  # buffers are ours: donated, or just made
    if not nesterov:
        return buffers, buffers
    if donate:
        foreach.add_(grads, buffers, momentum)
        return buffers, grads
    return buffers, foreach.add(grads, buffers, momentum)


def _orthogonalise(directions: list[Tensor], steps: int, eps: float, dtype: torch.dtype | None) -> list[Tensor]:
    """newton_schulz of each leaf times max(1, rows/cols)^0.5. Leaves of one shape, device and dtype
    (a model's q/k/v/output projections, its w1s, ...) run as one batch: one matmul per step for
    the group instead of one per matrix."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(directions):
        groups.setdefault((d.shape, d.device, d.dtype), []).append(i)
    out: list[Tensor] = [directions[0]] * len(directions)
    for (shape, _, _), indices in groups.items():
        rows, cols = shape
        stacked = newton_schulz(torch.stack([directions[i] for i in indices]), steps, eps, dtype)
        if rows > cols:
            stacked = stacked * (rows / cols) ** 0.5
        for i, matrix in zip(indices, stacked.unbind(0), strict=True):
            out[i] = matrix
    return out


def _check_matrices(leaves: list[Tensor]) -> None:
    bad = [tuple(leaf.shape) for leaf in leaves if leaf.ndim != 2]
    if bad:
        raise ValueError(f"scale_by_muon: Muon orthogonalises matrices only, got leaves of shapes {bad}; "
                         f"route the others to another transformation with core.optim.partition")
