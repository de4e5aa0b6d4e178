"""RoPE's two layouts, and the row order of the query and key projections that maps one to the other.

Here (the handout) each head rotates adjacent pairs: dimensions (2k, 2k+1) by the angle
position * theta^(-2k/d_k). `transformers`' Llama rotates halves: dimensions (k, k + d_k/2) by the
same angle (its `rotate_half`, with cos and sin repeated over both halves). Writing both out for a
head vector x of d_k dimensions:

    pairs:   y[2k]       = x[2k] cos_k - x[2k+1] sin_k     y[2k+1]     = x[2k] sin_k + x[2k+1] cos_k
    halves:  y[k]        = x[k]  cos_k - x[k+d/2] sin_k    y[k+d/2]    = x[k]  sin_k + x[k+d/2] cos_k

So the halves layout computes the pairs layout exactly when its dimension k holds our 2k and its
dimension k + d_k/2 holds our 2k+1: within each head, Llama's row i of W_q and W_k is our row
HALVES_ORDER[i] = (0, 2, 4, ..., d_k-2, 1, 3, ..., d_k-1). Queries and keys are permuted alike,
so every dot product q.k, hence every attention weight, is unchanged; values and the output
projection never meet RoPE and keep their order.
"""

import torch
from jaxtyping import Float
from torch import Tensor


def halves_order(head_dim: int) -> list[int]:
    """Which of our rows (within a head) each of Llama's rows holds: evens, then odds."""
    return [*range(0, head_dim, 2), *range(1, head_dim, 2)]


def _reorder_heads(weight: Tensor, num_heads: int, order: list[int]) -> Tensor:
    heads = weight.unflatten(0, (num_heads, -1))
    return heads[:, torch.tensor(order)].flatten(0, 1).contiguous()


def pairs_to_halves(weight: Float[Tensor, "d_out d_in"], num_heads: int) -> Float[Tensor, "d_out d_in"]:
    """A query or key projection of ours as Llama's: its rows reordered within each head."""
    return _reorder_heads(weight, num_heads, halves_order(weight.shape[0] // num_heads))


def halves_to_pairs(weight: Float[Tensor, "d_out d_in"], num_heads: int) -> Float[Tensor, "d_out d_in"]:
    """The inverse of pairs_to_halves: a Llama query or key projection as ours."""
    order = halves_order(weight.shape[0] // num_heads)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return _reorder_heads(weight, num_heads, inverse)
