"""The Transformer language model as a pure function of its parameter pytree.

The pytree mirrors the reference state dict (see params/init.py): flattening it gives names such
as `layers.0.attn.q_proj.weight`. Ablations (norm placement, no positions, SiLU FFN, tied
embeddings) are switches of the same forward, set in ModelConfig."""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.attention import KV, multihead_self_attention_step
from core.config import ModelConfig
from core.layers import embedding, linear, rmsnorm, silu_ffn, swiglu


def feed_forward(params: dict, x: Float[Tensor, "*batch d_model"], config: ModelConfig) -> Float[Tensor, "*batch d_model"]:
    if config.ffn == "swiglu":
        return swiglu(params["w1"]["weight"], params["w2"]["weight"], params["w3"]["weight"], x)
    return silu_ffn(params["w1"]["weight"], params["w2"]["weight"], x)


def _attention(params: dict, x: Tensor, config: ModelConfig, positions: Tensor | None, past: KV | None) -> tuple[Tensor, KV]:
    rope = config.position == "rope"
    return multihead_self_attention_step(
        params["attn"],
        x,
        config.num_heads,
        rope_theta=config.rope_theta if rope else None,
        max_seq_len=config.context_length if rope else None,
        positions=positions,
        past=past,
    )


def _block(params: dict, x: Tensor, config: ModelConfig, positions: Tensor | None, past: KV | None) -> tuple[Tensor, KV]:
    eps = config.rmsnorm_eps
    if config.norm == "pre":
        attended, kv = _attention(params, rmsnorm(params["ln1"]["weight"], x, eps), config, positions, past)
        h = x + attended
        return h + feed_forward(params["ffn"], rmsnorm(params["ln2"]["weight"], h, eps), config), kv
    if config.norm == "post":
        attended, kv = _attention(params, x, config, positions, past)
        h = rmsnorm(params["ln1"]["weight"], x + attended, eps)
        return rmsnorm(params["ln2"]["weight"], h + feed_forward(params["ffn"], h, config), eps), kv
    attended, kv = _attention(params, x, config, positions, past)
    h = x + attended
    return h + feed_forward(params["ffn"], h, config), kv


def transformer_block(
    params: dict,
    x: Float[Tensor, "*batch seq d_model"],
    config: ModelConfig,
    positions: Int[Tensor, "*#pbatch seq"] | None = None,
) -> Float[Tensor, "*batch seq d_model"]:
    """One block: causal self-attention then feed-forward, each with a residual connection and
    RMSNorm placed as config.norm says (pre: x + f(norm(x)); post: norm(x + f(x)); none)."""
    out, _ = _block(params, x, config, positions, None)
    return out


def _check_length(tokens: Tensor, config: ModelConfig, past_len: int = 0) -> None:
    seq = tokens.shape[-1]
    if past_len + seq > config.context_length:
        raise ValueError(
            f"sequence of {past_len + seq} tokens exceeds the model's context_length {config.context_length}"
        )


def _logits(params: dict, x: Tensor, config: ModelConfig) -> Tensor:
    if config.norm == "pre":
        x = rmsnorm(params["ln_final"]["weight"], x, config.rmsnorm_eps)
    head = params["token_embeddings"] if config.tie_embeddings else params["lm_head"]
    return linear(head["weight"], x)


def forward(
    params: dict, tokens: Int[Tensor, "batch seq"], config: ModelConfig
) -> Float[Tensor, "batch seq vocab"]:
    """Next-token logits for every position of `tokens` (seq <= context_length)."""
    _check_length(tokens, config)
    x = embedding(params["token_embeddings"]["weight"], tokens)
    for layer in params["layers"]:
        x, _ = _block(layer, x, config, None, None)
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
    new_layers = []
    for layer, past in zip(params["layers"], cache.layers, strict=True):
        x, kv = _block(layer, x, config, None, past)
        new_layers.append(kv)
    return _logits(params, x, config), KVCache(layers=tuple(new_layers))
