"""An independent float64 Transformer LM written with torch's own ops, to check ours against.

RoPE here multiplies complex numbers (x[2k] + i x[2k+1]) by e^(i m theta_k), attention is
F.scaled_dot_product_attention and RMSNorm is F.rms_norm: nothing is shared with core/."""

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import ModelConfig


def rope64(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rotation = torch.polar(torch.ones((), dtype=torch.float64), positions.double()[..., None] * freqs)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).reshape(*x.shape[:-1], d)


def attention64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, prefix: str) -> Tensor:
    *batch, seq, d_model = x.shape
    h = config.num_heads

    def heads(name: str) -> Tensor:
        projected = x @ w[f"{prefix}attn.{name}.weight"].double().T
        return projected.reshape(*batch, seq, h, d_model // h).transpose(-3, -2)

    q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
    if config.position == "rope":
        positions = torch.arange(seq)
        q, k = rope64(q, positions, config.rope_theta), rope64(k, positions, config.rope_theta)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(-3, -2).reshape(*batch, seq, d_model) @ w[f"{prefix}attn.output_proj.weight"].double().T


def ffn64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, prefix: str) -> Tensor:
    w1, w2 = w[f"{prefix}ffn.w1.weight"].double(), w[f"{prefix}ffn.w2.weight"].double()
    hidden = F.silu(x @ w1.T)
    if config.ffn == "swiglu":
        hidden = hidden * (x @ w[f"{prefix}ffn.w3.weight"].double().T)
    return hidden @ w2.T


def block64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, prefix: str = "") -> Tensor:
    def norm(name: str, t: Tensor) -> Tensor:
        return F.rms_norm(t, (t.shape[-1],), w[f"{prefix}{name}.weight"].double(), eps=config.rmsnorm_eps)

    if config.norm == "pre":
        h = x + attention64(w, norm("ln1", x), config, prefix)
        return h + ffn64(w, norm("ln2", h), config, prefix)
    if config.norm == "post":
        h = norm("ln1", x + attention64(w, x, config, prefix))
        return norm("ln2", h + ffn64(w, h, config, prefix))
    h = x + attention64(w, x, config, prefix)
    return h + ffn64(w, h, config, prefix)


def lm64(w: dict[str, Tensor], tokens: Tensor, config: ModelConfig) -> Tensor:
    x = F.embedding(tokens, w["token_embeddings.weight"].double())
    for i in range(config.num_layers):
        x = block64(w, x, config, f"layers.{i}.")
    if config.norm == "pre":
        x = F.rms_norm(x, (x.shape[-1],), w["ln_final.weight"].double(), eps=config.rmsnorm_eps)
    head = w["token_embeddings.weight"] if config.tie_embeddings else w["lm_head.weight"]
    return x @ head.double().T


def torch_causal_self_attention(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, num_heads: int) -> Tensor:
    """Causal self-attention by nn.MultiheadAttention (no bias), from the four projection weights."""
    d_model, seq = x.shape[-1], x.shape[-2]
    module = torch.nn.MultiheadAttention(d_model, num_heads, bias=False, batch_first=True)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
        module.out_proj.weight.copy_(wo)
    # nn.MultiheadAttention's boolean mask marks the positions NOT allowed to attend.
    future = torch.ones(seq, seq, dtype=torch.bool).triu(diagonal=1)
    out, _ = module(x, x, x, attn_mask=future, need_weights=False)
    return out
