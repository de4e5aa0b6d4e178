"""The small building blocks of the Transformer, each a pure function of its weights and input.

Weights use torch.nn.Linear's (out, in) layout, so state dicts load without transposes."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def linear(weight: Float[Tensor, "d_out d_in"], x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
    return x @ weight.T


def embedding(weight: Float[Tensor, "vocab d_model"], token_ids: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch d_model"]:
    return weight[token_ids]


def rmsnorm(
    weight: Float[Tensor, " d_model"], x: Float[Tensor, "*batch d_model"], eps: float = 1e-5
) -> Float[Tensor, "*batch d_model"]:
    # Squares of bf16/fp16 activations overflow or lose precision; normalise in float32.
    in_dtype = x.dtype
    x = x.float()
    rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x * rms * weight).to(in_dtype)


def silu(x: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
    return x * torch.sigmoid(x)


def swiglu(
    w1: Float[Tensor, "d_ff d_model"],
    w2: Float[Tensor, "d_model d_ff"],
    w3: Float[Tensor, "d_ff d_model"],
    x: Float[Tensor, "*batch d_model"],
    activation: Callable[[Tensor], Tensor] = silu,
) -> Float[Tensor, "*batch d_model"]:
    """w2 (silu(w1 x) * w3 x); `activation` is silu, or F.silu on the fast path. w1 and w3 stay two
    matmuls: one over torch.cat((w1, w3)) measured no faster (forward+backward, eager, 2 threads,
    median of 8: handout shape 741.5 ms separate vs 769.5 ms cat; cpu-small 283.4 vs 283.5 ms)."""
    return linear(w2, activation(linear(w1, x)) * linear(w3, x))


def silu_ffn(
    w1: Float[Tensor, "d_ff d_model"],
    w2: Float[Tensor, "d_model d_ff"],
    x: Float[Tensor, "*batch d_model"],
    activation: Callable[[Tensor], Tensor] = silu,
) -> Float[Tensor, "*batch d_model"]:
    """The ungated feed-forward of the SwiGLU ablation: w2 silu(w1 x)."""
    return linear(w2, activation(linear(w1, x)))


def relu_squared(x: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
    return torch.relu(x).square()


def relu2_ffn(
    w1: Float[Tensor, "d_ff d_model"], w2: Float[Tensor, "d_model d_ff"], x: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """The ReLU² feed-forward of the speedrun records (So et al., Primer, 2021): w2 relu(w1 x)^2.
    One kernel serves both paths: torch has no fused op for it to dispatch to."""
    return linear(w2, relu_squared(linear(w1, x)))


def softcap(logits: Float[Tensor, "*shape"], cap: float) -> Float[Tensor, "*shape"]:
    """cap tanh(logits / cap): about the identity for |logits| << cap, and never beyond +-cap,
    which keeps the loss from rewarding ever larger logits (as in Gemma 2 and the modded-nanogpt
    speedrun records)."""
    return cap * torch.tanh(logits / cap)


def softmax(x: Float[Tensor, "*shape"], dim: int = -1) -> Float[Tensor, "*shape"]:
    # Subtracting the max keeps exp() from overflowing; the result is unchanged mathematically.
    exp = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exp / exp.sum(dim=dim, keepdim=True)


def log_softmax(x: Float[Tensor, "*shape"], dim: int = -1) -> Float[Tensor, "*shape"]:
    shifted = x - x.amax(dim=dim, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


# -- the fast path: torch's fused kernels, the same functions as above to fp32 rounding ----------


def fused_rmsnorm(
    weight: Float[Tensor, " d_model"], x: Float[Tensor, "*batch d_model"], eps: float = 1e-5
) -> Float[Tensor, "*batch d_model"]:
    """rmsnorm() through F.rms_norm, in float32 and returned in the input's dtype."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)
