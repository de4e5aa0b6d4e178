"""An independent float64 Transformer LM written with torch's own ops, to check ours against.

RoPE here multiplies complex numbers (x[2k] + i x[2k+1]) by e^(i m theta_k), attention is
F.scaled_dot_product_attention and RMSNorm is F.rms_norm: nothing is shared with core/.

The speedrun switches, written plainly: QK-norm is F.rms_norm of each head's q and k (gain over
head_dim) before RoPE; ReLU² is w2 relu(w1 x)^2; the soft-cap is c tanh(logits / c) on the
logits; the value residual replaces a later layer's values v by lam v + (1 - lam) v1, where v1 are
layer 0's values and lam is the layer's `attn.value_lambda`."""

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


def heads64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, name: str) -> Tensor:
    """x @ W^T of projection `name` (e.g. "layers.0.attn.v_proj"), as (*batch, heads, seq, d_k)."""
    *batch, seq, d_model = x.shape
    projected = x @ w[f"{name}.weight"].double().T
    return projected.reshape(*batch, seq, config.num_heads, d_model // config.num_heads).transpose(-3, -2)


def attention64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, prefix: str, v1: Tensor | None = None) -> Tensor:
    *batch, seq, d_model = x.shape
    q, k, v = (heads64(w, x, config, f"{prefix}attn.{name}") for name in ("q_proj", "k_proj", "v_proj"))
    if config.qk_norm:
        eps = config.rmsnorm_eps
        q = F.rms_norm(q, (q.shape[-1],), w[f"{prefix}attn.q_norm.weight"].double(), eps=eps)
        k = F.rms_norm(k, (k.shape[-1],), w[f"{prefix}attn.k_norm.weight"].double(), eps=eps)
    if v1 is not None:
        lam = w[f"{prefix}attn.value_lambda"].double()
        v = lam * v + (1 - lam) * v1
    if config.position == "rope":
        positions = torch.arange(seq)
        q, k = rope64(q, positions, config.rope_theta), rope64(k, positions, config.rope_theta)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(-3, -2).reshape(*batch, seq, d_model) @ w[f"{prefix}attn.output_proj.weight"].double().T


def ffn64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, prefix: str) -> Tensor:
    w1, w2 = w[f"{prefix}ffn.w1.weight"].double(), w[f"{prefix}ffn.w2.weight"].double()
    if config.ffn == "relu2":
        return F.relu(x @ w1.T) ** 2 @ w2.T
    hidden = F.silu(x @ w1.T)
    if config.ffn == "swiglu":
        hidden = hidden * (x @ w[f"{prefix}ffn.w3.weight"].double().T)
    return hidden @ w2.T


def norm64(w: dict[str, Tensor], name: str, x: Tensor, config: ModelConfig) -> Tensor:
    return F.rms_norm(x, (x.shape[-1],), w[f"{name}.weight"].double(), eps=config.rmsnorm_eps)


def block64(w: dict[str, Tensor], x: Tensor, config: ModelConfig, prefix: str = "", v1: Tensor | None = None) -> Tensor:
    def norm(name: str, t: Tensor) -> Tensor:
        return norm64(w, f"{prefix}{name}", t, config)

    if config.norm == "pre":
        h = x + attention64(w, norm("ln1", x), config, prefix, v1)
        return h + ffn64(w, norm("ln2", h), config, prefix)
    if config.norm == "post":
        h = norm("ln1", x + attention64(w, x, config, prefix, v1))
        return norm("ln2", h + ffn64(w, h, config, prefix))
    h = x + attention64(w, x, config, prefix, v1)
    return h + ffn64(w, h, config, prefix)


def lm64(w: dict[str, Tensor], tokens: Tensor, config: ModelConfig) -> Tensor:
    x = F.embedding(tokens, w["token_embeddings.weight"].double())
    v1 = None
    if config.value_residual:
        # Layer 0's values: the v_proj of its attention input, the embeddings (normed first when pre-norm).
        first_input = norm64(w, "layers.0.ln1", x, config) if config.norm == "pre" else x
        v1 = heads64(w, first_input, config, "layers.0.attn.v_proj")
    for i in range(config.num_layers):
        x = block64(w, x, config, f"layers.{i}.", v1 if i > 0 else None)
    if config.norm == "pre":
        x = norm64(w, "ln_final", x, config)
    head = w["token_embeddings.weight"] if config.tie_embeddings else w["lm_head.weight"]
    logits = x @ head.double().T
    if config.logit_softcap is not None:
        logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
    return logits


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
