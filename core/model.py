"""The Transformer language model as a pure function of its parameter pytree.

The pytree mirrors the reference state dict (see params/init.py): flattening it gives names such
as `layers.0.attn.q_proj.weight`. Ablations (norm placement, no positions, SiLU FFN, tied
embeddings) are switches of the same forward, set in ModelConfig."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from core.attention import KV, Rotation, causal_attention, fused_causal_attention, multihead_self_attention_step, rope_rotation
from core.config import ModelConfig
from core.layers import embedding, fused_rmsnorm, linear, rmsnorm, silu, silu_ffn, swiglu
from core.loss import cross_entropy, fused_cross_entropy


@dataclass(frozen=True)
class Kernels:
    """The primitives one value of ModelConfig.kernels computes the model and its loss with; the
    model around them is written once."""

    rmsnorm: Callable
    attention: Callable  # causal attention of the last q of k positions
    silu: Callable
    cross_entropy: Callable


KERNELS = {
    "reference": Kernels(rmsnorm, causal_attention, silu, cross_entropy),
    "torch": Kernels(fused_rmsnorm, fused_causal_attention, F.silu, fused_cross_entropy),
}


def _norm(params: dict, x: Tensor, config: ModelConfig) -> Tensor:
    return KERNELS[config.kernels].rmsnorm(params["weight"], x, config.rmsnorm_eps)


def feed_forward(params: dict, x: Float[Tensor, "*batch d_model"], config: ModelConfig) -> Float[Tensor, "*batch d_model"]:
    activation = KERNELS[config.kernels].silu
    if config.ffn == "swiglu":
        return swiglu(params["w1"]["weight"], params["w2"]["weight"], params["w3"]["weight"], x, activation)
    return silu_ffn(params["w1"]["weight"], params["w2"]["weight"], x, activation)


def rotation_for(config: ModelConfig, start: int, seq: int, device: torch.device) -> Rotation | None:
    """RoPE's cos/sin for positions start .. start+seq-1, shared by every layer (None for NoPE)."""
    if config.position != "rope":
        return None
    positions = torch.arange(start, start + seq, device=device)
    return rope_rotation(config.head_dim, config.rope_theta, config.context_length, positions)


def _block(params: dict, x: Tensor, config: ModelConfig, rotation: Rotation | None, past: KV | None) -> tuple[Tensor, KV]:
    attn, ffn = params["attn"], params["ffn"]
    attend = KERNELS[config.kernels].attention
    if config.norm == "pre":
        attended, kv = multihead_self_attention_step(
            attn, _norm(params["ln1"], x, config), config.num_heads, rotation=rotation, past=past, attend=attend
        )
        h = x + attended
        return h + feed_forward(ffn, _norm(params["ln2"], h, config), config), kv
    attended, kv = multihead_self_attention_step(attn, x, config.num_heads, rotation=rotation, past=past, attend=attend)
    if config.norm == "post":
        h = _norm(params["ln1"], x + attended, config)
        return _norm(params["ln2"], h + feed_forward(ffn, h, config), config), kv
    h = x + attended
    return h + feed_forward(ffn, h, config), kv


def transformer_block(
    params: dict, x: Float[Tensor, "*batch seq d_model"], config: ModelConfig
) -> Float[Tensor, "*batch seq d_model"]:
    """One block over positions 0 .. seq-1: causal self-attention then feed-forward, each with a
    residual connection and RMSNorm placed as config.norm says (pre: x + f(norm(x));
    post: norm(x + f(x)); none: x + f(x))."""
    out, _ = _block(params, x, config, rotation_for(config, 0, x.shape[-2], x.device), None)
    return out


def _check_length(tokens: Tensor, config: ModelConfig, past_len: int = 0) -> None:
    seq = tokens.shape[-1]
    if past_len + seq > config.context_length:
        raise ValueError(
            f"sequence of {past_len + seq} tokens exceeds the model's context_length {config.context_length}"
        )


def _logits(params: dict, x: Tensor, config: ModelConfig) -> Tensor:
    if config.norm == "pre":
        x = _norm(params["ln_final"], x, config)
    head = params["token_embeddings"] if config.tie_embeddings else params["lm_head"]
    return linear(head["weight"], x)


def forward(
    params: dict, tokens: Int[Tensor, "batch seq"], config: ModelConfig
) -> Float[Tensor, "batch seq vocab"]:
    """Next-token logits for every position of `tokens` (seq <= context_length)."""
    _check_length(tokens, config)
    x = embedding(params["token_embeddings"]["weight"], tokens)
    rotation = rotation_for(config, 0, tokens.shape[-1], tokens.device)
    for layer in params["layers"]:
        x, _ = _block(layer, x, config, rotation, None)
    return _logits(params, x, config)


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for the positions processed so far."""

    layers: tuple[KV, ...]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2]


def init_kv_cache(
    config: ModelConfig, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> KVCache:
    empty = torch.zeros(batch_size, config.num_heads, 0, config.head_dim, device=device, dtype=dtype)
    return KVCache(layers=tuple((empty, empty) for _ in range(config.num_layers)))


def forward_cached(
    params: dict, tokens: Int[Tensor, "batch seq"], config: ModelConfig, cache: KVCache
) -> tuple[Float[Tensor, "batch seq vocab"], KVCache]:
    """Logits of `tokens` placed after the cache's positions, and the cache extended by them.

    Each new token costs attention over the cached keys, not a rerun of the whole prefix."""
    _check_length(tokens, config, cache.length)
    x = embedding(params["token_embeddings"]["weight"], tokens)
    rotation = rotation_for(config, cache.length, tokens.shape[-1], tokens.device)
    new_layers = []
    for layer, past in zip(params["layers"], cache.layers, strict=True):
        x, kv = _block(layer, x, config, rotation, past)
        new_layers.append(kv)
    return _logits(params, x, config), KVCache(layers=tuple(new_layers))
