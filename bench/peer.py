"""The expert peer of the benchmarks: the same language model written as a torch expert would.

Same architecture as core.model.forward (pre-norm, RoPE on adjacent pairs (x[2k], x[2k+1]),
SwiGLU, untied head, RMSNorm eps from the config), built nanoGPT-style from torch's fused pieces:
one QKV projection, one W1/W3 projection, F.rms_norm, F.scaled_dot_product_attention(is_causal=True),
F.silu and F.cross_entropy. `from_params` loads our parameter pytree into it (fusing the Q/K/V
and W1/W3 matrices), so both sides of a comparison start from identical weights.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import ModelConfig
from core.tree import Tree
from params.tree import flatten


def rope_tables(config: ModelConfig, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of position * theta^(-2k/d_k), (context, d_k / 2), computed in float64."""
    d_k = config.head_dim
    inv_freq = config.rope_theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64, device=device) / d_k)
    angles = torch.arange(config.context_length, dtype=torch.float64, device=device)[:, None] * inv_freq
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each adjacent pair (x[2k], x[2k+1]) of x (batch, heads, seq, d_k)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.output_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.output_proj(y.transpose(1, 2).reshape(b, s, d))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w13 = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
        self.w2 = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.RMSNorm(config.d_model, eps=config.rmsnorm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.RMSNorm(config.d_model, eps=config.rmsnorm_eps)
        self.ffn = SwiGLU(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.ffn(self.ln2(x))


class PeerLM(nn.Module):
    """The language model of `config` (pre-norm, RoPE, SwiGLU, untied head only)."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None):
        super().__init__()
        switches = (config.qk_norm, config.logit_softcap, config.value_residual)
        if (config.norm, config.position, config.ffn, config.tie_embeddings, switches) != ("pre", "rope", "swiglu", False, (False, None, False)):
            raise ValueError("the peer implements only the baseline: pre-norm, RoPE, SwiGLU, untied head, no QK-norm, "
                             "soft-cap or value residual")
        self.config = config
        self.token_embeddings = nn.Embedding(config.vocab_size, config.d_model, device=device)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers)).to(device)
        self.ln_final = nn.RMSNorm(config.d_model, eps=config.rmsnorm_eps, device=device)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device)
        cos, sin = rope_tables(config, device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens: Tensor, targets: Tensor | None = None) -> Tensor:
        """Logits (batch, seq, vocab), or the mean cross-entropy against `targets` when given."""
        seq = tokens.shape[-1]
        cos, sin = self.cos[:seq], self.sin[:seq]
        x = self.token_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.ln_final(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())


def peer_state_dict(params: Tree, config: ModelConfig) -> dict[str, Tensor]:
    """Our parameter pytree under the peer's names, Q/K/V and W1/W3 concatenated (copies)."""
    flat = flatten(params)
    state = {name: flat[name].detach().clone() for name in ("token_embeddings.weight", "ln_final.weight", "lm_head.weight")}
    for i in range(config.num_layers):
        p = f"layers.{i}."
        attn = [flat[f"{p}attn.{n}_proj.weight"] for n in "qkv"]
        state[f"{p}attn.qkv.weight"] = torch.cat(attn).detach()
        state[f"{p}attn.output_proj.weight"] = flat[f"{p}attn.output_proj.weight"].detach().clone()
        state[f"{p}ffn.w13.weight"] = torch.cat((flat[f"{p}ffn.w1.weight"], flat[f"{p}ffn.w3.weight"])).detach()
        state[f"{p}ffn.w2.weight"] = flat[f"{p}ffn.w2.weight"].detach().clone()
        for norm in ("ln1", "ln2"):
            state[f"{p}{norm}.weight"] = flat[f"{p}{norm}.weight"].detach().clone()
    return state


def from_params(params: Tree, config: ModelConfig, device: torch.device | str | None = None) -> PeerLM:
    """A PeerLM holding the weights of our pytree `params` (on `device`, default the params' own)."""
    if device is None:
        device = flatten(params)["lm_head.weight"].device
    model = PeerLM(config, device=device)
    model.load_state_dict(peer_state_dict(params, config), strict=True)
    return model
