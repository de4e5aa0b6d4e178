"""The Transformer language model as a pure function of its parameter pytree.

The pytree mirrors the reference state dict (see params/init.py): flattening it gives names such
as `layers.0.attn.q_proj.weight`. Ablations (norm placement, no positions, SiLU FFN, tied
embeddings) and the speedrun records' switches (QK-norm, ReLU² FFN, logit soft-cap, value
residual) are switches of the same forward, set in ModelConfig."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from core.attention import (
    FAST_ATTENTION, KV, REFERENCE_ATTENTION, AttentionKernels, Rotation, multihead_self_attention_step, rope_rotation,
)
from core.config import ModelConfig
from core.layers import embedding, fused_rmsnorm, linear, relu2_ffn, rmsnorm, silu, silu_ffn, softcap, swiglu
from core.loss import cross_entropy, fused_cross_entropy


@dataclass(frozen=True)
class Kernels:
    """The primitives one value of ModelConfig.kernels computes the model and its loss with; the
    model around them is written once."""

    rmsnorm: Callable
    attention: AttentionKernels  # head split and merge, RoPE's rotation, causal attention
    silu: Callable
    cross_entropy: Callable


KERNELS = {
    "reference": Kernels(rmsnorm, REFERENCE_ATTENTION, silu, cross_entropy),
    "torch": Kernels(fused_rmsnorm, FAST_ATTENTION, F.silu, fused_cross_entropy),
}


def _norm(params: dict, x: Tensor, config: ModelConfig) -> Tensor:
    return KERNELS[config.kernels].rmsnorm(params["weight"], x, config.rmsnorm_eps)


def feed_forward(params: dict, x: Float[Tensor, "*batch d_model"], config: ModelConfig) -> Float[Tensor, "*batch d_model"]:
    activation = KERNELS[config.kernels].silu
    if config.ffn == "swiglu":
        return swiglu(params["w1"]["weight"], params["w2"]["weight"], params["w3"]["weight"], x, activation)
    if config.ffn == "relu2":
        return relu2_ffn(params["w1"]["weight"], params["w2"]["weight"], x)
    return silu_ffn(params["w1"]["weight"], params["w2"]["weight"], x, activation)


def rotation_for(config: ModelConfig, start: int, seq: int, device: torch.device) -> Rotation | None:
    """RoPE's cos/sin for positions start .. start+seq-1, shared by every layer (None for NoPE)."""
    if config.position != "rope":
        return None
    positions = torch.arange(start, start + seq, device=device)
    return rope_rotation(config.head_dim, config.rope_theta, config.context_length, positions)


def _attention(
    params: dict, x: Tensor, config: ModelConfig, rotation: Rotation | None, past: KV | None, first_values: Tensor | None
) -> tuple[Tensor, KV]:
    kernels = KERNELS[config.kernels]
    qk_norm = partial(kernels.rmsnorm, eps=config.rmsnorm_eps) if config.qk_norm else None
    return multihead_self_attention_step(
        params, x, config.num_heads, rotation=rotation, past=past, kernels=kernels.attention, qk_norm=qk_norm,
        first_values=first_values,
    )


def _block(
    params: dict, x: Tensor, config: ModelConfig, rotation: Rotation | None, past: KV | None, first_values: Tensor | None
) -> tuple[Tensor, KV]:
    ffn = params["ffn"]
    # A partial, not a nested def: a def's annotations (tuple[...]) are evaluated at each call,
    # and torch.compile breaks its graph on them.
    attend = partial(_attention, params["attn"], config=config, rotation=rotation, past=past, first_values=first_values)
    if config.norm == "pre":
        attended, kv = attend(_norm(params["ln1"], x, config))
        h = x + attended
        return h + feed_forward(ffn, _norm(params["ln2"], h, config), config), kv
    attended, kv = attend(x)
    if config.norm == "post":
        h = _norm(params["ln1"], x + attended, config)
        return _norm(params["ln2"], h + feed_forward(ffn, h, config), config), kv
    h = x + attended
    return h + feed_forward(ffn, h, config), kv


def transformer_block(
    params: dict,
    x: Float[Tensor, "*batch seq d_model"],
    config: ModelConfig,
    first_values: Float[Tensor, "*batch heads seq d_k"] | None = None,
) -> Float[Tensor, "*batch seq d_model"]:
    """One block over positions 0 .. seq-1: causal self-attention then feed-forward, each with a
    residual connection and RMSNorm placed as config.norm says (pre: x + f(norm(x));
    post: norm(x + f(x)); none: x + f(x)). With config.value_residual, a block after the first
    takes the first layer's values as `first_values`."""
    out, _ = _block(params, x, config, rotation_for(config, 0, x.shape[-2], x.device), None, first_values)
    return out


def _layers(
    params: dict, x: Tensor, config: ModelConfig, rotation: Rotation | None, pasts: Sequence[KV | None]
) -> tuple[Tensor, tuple[KV, ...]]:
    """Every block in turn; returns the last hidden state and each layer's keys/values."""
    first_values = None
    kvs = []
    for i, (layer, past) in enumerate(zip(params["layers"], pasts, strict=True)):
        x, kv = _block(layer, x, config, rotation, past, first_values)
        if i == 0 and config.value_residual:
            # Layer 0 mixes nothing in; its values of the new positions are the v1 of the rest.
            first_values = kv[1][..., -x.shape[-2] :, :]
        kvs.append(kv)
    return x, tuple(kvs)


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
    logits = linear(head["weight"], x)
    # Here rather than in the loss, so that training, evaluation and sampling see the same model.
    return logits if config.logit_softcap is None else softcap(logits, config.logit_softcap)


def forward(
    params: dict, tokens: Int[Tensor, "batch seq"], config: ModelConfig
) -> Float[Tensor, "batch seq vocab"]:
    """Next-token logits for every position of `tokens` (seq <= context_length)."""
    _check_length(tokens, config)
    x = embedding(params["token_embeddings"]["weight"], tokens)
    rotation = rotation_for(config, 0, tokens.shape[-1], tokens.device)
    x, _ = _layers(params, x, config, rotation, [None] * config.num_layers)
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
    x, kvs = _layers(params, x, config, rotation, cache.layers)
    return _logits(params, x, config), KVCache(layers=kvs)
