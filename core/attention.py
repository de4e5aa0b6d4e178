"""Rotary position embeddings, scaled dot-product attention and causal multi-head self-attention.

Two sets of kernels compute the same attention (ModelConfig.kernels): the reference math, written
as the handout writes it, with einx naming every axis (the oracle the adapters and tests use), and
the fast path of torch's views and fused attention kernel, which the trainer and generation run."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from core.layers import linear, softmax

# Per layer, the keys and values of the positions seen so far: each (*batch, heads, seq, d_k).
KV = tuple[Tensor, Tensor]
# RoPE's cos and sin at each position, each (*batch, seq, d_k / 2).
Rotation = tuple[Tensor, Tensor]


def _einx():
    """einx, imported when a reference kernel first runs: importing it loads torch's compiler
    machinery, which made every eager op of the process slower (`just bench train`: the peer's
    eager step 83 -> 90 ms with einx imported), so the fused path never imports it."""
    import einx

    return einx


def constant_when_compiled(fn: Callable) -> Callable:
    """torch.compiler.assume_constant_result, without its import of torch._dynamo: that import
    costs every command seconds at start-up, compiling or not, and the decorator only sets the mark
    that dynamo reads when it traces a call (tests/test_model.py checks that the two agree)."""
    fn._dynamo_marked_constant = True
    return fn


@constant_when_compiled
def rope_table(
    d_k: int, theta: float, max_seq_len: int, device: torch.device
) -> tuple[Float[Tensor, "max_seq_len half_d_k"], Float[Tensor, "max_seq_len half_d_k"]]:
    """cos and sin of position * theta^(-2k/d_k), built once per (d_k, theta, max_seq_len, device):
    an lru_cache keeps them, a memo of a pure function (core's only state besides bytes_unicode's).

    A constant of compiled graphs: traced instead, inductor fuses the table's float64 cos/sin into
    every rotation and recomputes them per element (a fifth of a small model's step on the CPU)."""
    return _rope_table(d_k, float(theta), max_seq_len, device)


@lru_cache(maxsize=32)
def _rope_table(d_k: int, theta: float, max_seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Built outside any torch.func transform: a tensor made inside torch.func.grad is wrapped for
    # that transform, and a cached wrapper would outlive it.
    with torch._C._DisableFuncTorch():
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq
        return angles.cos().float(), angles.sin().float()


def rope_rotation(
    d_k: int, theta: float, max_seq_len: int, positions: Int[Tensor, "*pbatch seq"]
) -> tuple[Float[Tensor, "*pbatch seq half_d_k"], Float[Tensor, "*pbatch seq half_d_k"]]:
    """cos and sin of every position's angles: looked up once per forward pass and shared by the
    queries and keys of every layer. Positions must lie below max_seq_len (not checked here:
    that would sync with the device on every call)."""
    cos_table, sin_table = rope_table(d_k, theta, max_seq_len, positions.device)
    return cos_table[positions], sin_table[positions]


# -- the reference math: the handout's equations, every axis named --------------------------------
# einx traces an expression once per new combination of shapes, then looks it up on every call:
# no measurable share of a step at training shapes, a visible one of a toy model's (tests).


def rotate_pairs(
    x: Float[Tensor, "*batch seq d_k"], rotation: tuple[Float[Tensor, "*#rbatch seq half_d_k"], Float[Tensor, "*#rbatch seq half_d_k"]]
) -> Float[Tensor, "*batch seq d_k"]:
    """Rotate each adjacent pair (x[2k], x[2k+1]) by the angle whose cos and sin are given."""
    cos, sin = (t.to(x.dtype) for t in rotation)
    even, odd = _einx().id("... (half pair) -> pair ... half", x, pair=2)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos))
    return _einx().id("pair ... half -> ... (half pair)", rotated)


def rope(
    x: Float[Tensor, "*batch seq d_k"],
    positions: Int[Tensor, "*#pbatch seq"],
    theta: float,
    max_seq_len: int,
) -> Float[Tensor, "*batch seq d_k"]:
    """RoPE: rotate each adjacent pair (x[2k], x[2k+1]) by the angle position / theta^(2k/d_k).

    `positions` broadcasts against the leading dims of `x`."""
    return rotate_pairs(x, rope_rotation(x.shape[-1], theta, max_seq_len, positions))


def scaled_dot_product_attention(
    q: Float[Tensor, "*batch q d_k"],
    k: Float[Tensor, "*batch k d_k"],
    v: Float[Tensor, "*batch k d_v"],
    mask: Bool[Tensor, "*#mbatch q k"] | None = None,
) -> Float[Tensor, "*batch q d_v"]:
    """softmax(q k^T / sqrt(d_k)) v, where mask False gives a key probability 0."""
    scores = _einx().dot("... q [d_k], ... k [d_k] -> ... q k", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return _einx().dot("... q [k], ... [k] d_v -> ... q d_v", softmax(scores, dim=-1), v)


def causal_mask(num_queries: int, num_keys: int, device: torch.device) -> Bool[Tensor, "q k"]:
    """Query i (the last num_queries of num_keys positions) sees every key j at or before it."""
    offset = num_keys - num_queries
    queries = torch.arange(num_queries, device=device)[:, None] + offset
    return torch.arange(num_keys, device=device)[None, :] <= queries


def causal_attention(
    q: Float[Tensor, "*batch q d_k"], k: Float[Tensor, "*batch k d_k"], v: Float[Tensor, "*batch k d_v"]
) -> Float[Tensor, "*batch q d_v"]:
    """Causal attention of the last q of k positions (the handout's math, mask materialised)."""
    return scaled_dot_product_attention(q, k, v, causal_mask(q.shape[-2], k.shape[-2], q.device))


def split_heads(x: Float[Tensor, "*batch seq d_model"], num_heads: int) -> Float[Tensor, "*batch heads seq d_k"]:
    return _einx().id("... seq (heads d_k) -> ... heads seq d_k", x, heads=num_heads)


def merge_heads(x: Float[Tensor, "*batch heads seq d_k"]) -> Float[Tensor, "*batch seq d_model"]:
    return _einx().id("... heads seq d_k -> ... seq (heads d_k)", x)


# -- the fast path: torch's views and F.scaled_dot_product_attention ---------------------------
# The same functions as above without einx, which looks up its compiled expression by the shapes
# on every call: on this path that dispatch halves KV-cache decoding, a few small ops per layer and
# token (one thread, cpu-small shape, einx 0.4.3), while training steps, of large ops, time the same.


def fast_rotate_pairs(
    x: Float[Tensor, "*batch seq d_k"], rotation: tuple[Float[Tensor, "*#rbatch seq half_d_k"], Float[Tensor, "*#rbatch seq half_d_k"]]
) -> Float[Tensor, "*batch seq d_k"]:
    cos, sin = (t.to(x.dtype) for t in rotation)
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def fast_split_heads(x: Float[Tensor, "*batch seq d_model"], num_heads: int) -> Float[Tensor, "*batch heads seq d_k"]:
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)


def fast_merge_heads(x: Float[Tensor, "*batch heads seq d_k"]) -> Float[Tensor, "*batch seq d_model"]:
    return x.transpose(-3, -2).flatten(-2)


def fused_causal_attention(
    q: Float[Tensor, "*batch q d_k"], k: Float[Tensor, "*batch k d_k"], v: Float[Tensor, "*batch k d_v"]
) -> Float[Tensor, "*batch q d_v"]:
    """Causal attention of the last q of k positions through torch's fused kernel.

    torch's is_causal aligns the mask to the top-left (query i sees keys j <= i), right only when
    q == k; a single new query sees every key and needs no mask; new positions over a KV cache
    (1 < q < k) take causal_mask()'s bottom-right alignment explicitly."""
    num_queries, num_keys = q.shape[-2], k.shape[-2]
    if num_queries == num_keys:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if num_queries == 1:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(num_queries, num_keys, q.device))


# -- multi-head self-attention, over either set of kernels -------------------------------------


@dataclass(frozen=True)
class AttentionKernels:
    """The primitives of multihead_self_attention_step under one value of ModelConfig.kernels."""

    split_heads: Callable[[Tensor, int], Tensor]
    merge_heads: Callable[[Tensor], Tensor]
    rotate_pairs: Callable[[Tensor, Rotation], Tensor]
    attend: Callable[[Tensor, Tensor, Tensor], Tensor]  # causal attention of the last q of k positions


REFERENCE_ATTENTION = AttentionKernels(split_heads, merge_heads, rotate_pairs, causal_attention)
FAST_ATTENTION = AttentionKernels(fast_split_heads, fast_merge_heads, fast_rotate_pairs, fused_causal_attention)


def multihead_self_attention(
    params: dict,
    x: Float[Tensor, "*batch seq d_model"],
    num_heads: int,
    *,
    rope_theta: float | None = None,
    max_seq_len: int | None = None,
    positions: Int[Tensor, "*#pbatch seq"] | None = None,
) -> Float[Tensor, "*batch seq d_model"]:
    """Causal self-attention (the reference math); RoPE on queries and keys when rope_theta is given.

    params: {"q_proj", "k_proj", "v_proj", "output_proj"} each {"weight": (d_model, d_model)},
    heads stacked along the rows in order. positions default to 0 .. seq-1."""
    rotation = None
    if rope_theta is not None:
        if max_seq_len is None:
            raise ValueError("RoPE needs max_seq_len alongside rope_theta")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        rotation = rope_rotation(x.shape[-1] // num_heads, rope_theta, max_seq_len, positions)
    out, _ = multihead_self_attention_step(params, x, num_heads, rotation=rotation)
    return out


def mix_values(
    value_lambda: Float[Tensor, ""], v: Float[Tensor, "*batch heads seq d_k"], first_values: Float[Tensor, "*batch heads seq d_k"]
) -> Float[Tensor, "*batch heads seq d_k"]:
    """Value residual: v = lam v + (1 - lam) v1, v1 the first layer's values at the same positions.

    From Zhou et al., "Value Residual Learning For Alleviating Attention Concentration In
    Transformers" (arXiv:2410.17897), as the modded-nanogpt speedrun records (github.com/
    KellerJordan/modded-nanogpt, November 2024, `self.lamb`, credited to @Grad62304977) use it:
    one learned scalar per layer, initialised to 0.5. The records write (1 - lam) v + lam v1;
    here lam weighs the layer's own values, which at the shared 0.5 init is the same model."""
    return value_lambda * v + (1 - value_lambda) * first_values


def multihead_self_attention_step(
    params: dict,
    x: Float[Tensor, "*batch seq d_model"],
    num_heads: int,
    *,
    rotation: tuple[Float[Tensor, "*#rbatch seq half_d_k"], Float[Tensor, "*#rbatch seq half_d_k"]] | None = None,
    past: KV | None = None,
    kernels: AttentionKernels = REFERENCE_ATTENTION,
    qk_norm: Callable[[Tensor, Tensor], Tensor] | None = None,
    first_values: Float[Tensor, "*batch heads seq d_k"] | None = None,
) -> tuple[Float[Tensor, "*batch seq d_model"], KV]:
    """Self-attention of new positions over `past` keys/values plus their own (a KV cache).

    `rotation` is rope_rotation() of the new positions (None: no position information); `kernels`
    split and merge the heads, rotate the pairs and attend (REFERENCE_ATTENTION, or FAST_ATTENTION
    on torch's kernels). `qk_norm(gain, t)`, when given, is the RMSNorm applied to each head's queries and keys
    with gains params["q_norm"] and params["k_norm"]; `first_values`, when given, are mixed into
    the values with params["value_lambda"] (mix_values). Returns the output and the keys/values
    extended by the new positions; the values are cached mixed, so a decode step needs no v1 of
    the past.

    Three projections, not one matmul of torch.cat((wq, wk, wv)): the cat measured no faster
    (forward+backward, eager, 2 threads, median of 8: handout shape batch 4 741.5 ms separate vs
    750.2 ms cat; cpu-small batch 32 283.4 vs 281.2 ms, within noise)."""
    q = kernels.split_heads(linear(params["q_proj"]["weight"], x), num_heads)
    k = kernels.split_heads(linear(params["k_proj"]["weight"], x), num_heads)
    v = kernels.split_heads(linear(params["v_proj"]["weight"], x), num_heads)
    if qk_norm is not None:  # before RoPE, as in the records: a per-dimension gain does not commute with it
        q, k = qk_norm(params["q_norm"]["weight"], q), qk_norm(params["k_norm"]["weight"], k)
    if first_values is not None:
        v = mix_values(params["value_lambda"], v, first_values)
    if rotation is not None:
        per_head = tuple(t.unsqueeze(-3) for t in rotation)  # broadcast over the heads axis
        q, k = kernels.rotate_pairs(q, per_head), kernels.rotate_pairs(k, per_head)
    if past is not None:
        k = torch.cat((past[0], k), dim=-2)
        v = torch.cat((past[1], v), dim=-2)
    return linear(params["output_proj"]["weight"], kernels.merge_heads(kernels.attend(q, k, v))), (k, v)
