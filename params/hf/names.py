"""Our parameter names and `transformers`' LlamaForCausalLM names for the same tensors."""

from core.config import ModelConfig
from params.init import param_shapes

_TOP = {
    "token_embeddings.weight": "model.embed_tokens.weight",
    "ln_final.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# Within block i: `layers.i.NAME` here is `model.layers.i.HF_NAME` there.
_BLOCK = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ln1.weight": "input_layernorm.weight",
    "ln2.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",  # SwiGLU's w2 (silu(w1 x) * w3 x): w1 is the gate
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
# The projections whose rows RoPE's layout reorders (params/hf/rope.py).
ROTATED = ("attn.q_proj.weight", "attn.k_proj.weight")


def hf_name(name: str) -> str:
    """Llama's name of our parameter `name` (of a config that check_exportable accepts)."""
    if name in _TOP:
        return _TOP[name]
    layers, index, rest = name.split(".", 2)
    return f"model.{layers}.{index}.{_BLOCK[rest]}"


def hf_names(config: ModelConfig) -> dict[str, str]:
    """Our name -> Llama's name, for every parameter of `config`."""
    return {name: hf_name(name) for name in param_shapes(config)}


def is_rotated(name: str) -> bool:
    """Whether our parameter `name` is a query or key projection."""
    return name.startswith("layers.") and name.split(".", 2)[2] in ROTATED
