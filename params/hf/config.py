"""Our ModelConfig and a `transformers` LlamaConfig (as its config.json dict), both ways.

The handout's model with pre-norm RMSNorm, RoPE and a SwiGLU feed-forward, without biases, is
Llama. The other switches of ModelConfig change the function into one Llama cannot compute; they
are refused by name, before anything is written."""

from typing import Any

from core.config import ModelConfig
from core.errors import UsageError

# Llama's defaults for fields a config.json may leave out (LlamaConfig's, in transformers 4 and 5).
LLAMA_RMS_NORM_EPS = 1e-6
LLAMA_ROPE_THETA = 10000.0
LLAMA_CONTEXT = 2048


def export_refusal(config: ModelConfig) -> str | None:
    """Why Llama cannot compute the model `config` describes, naming the setting; None if it can."""
    if config.norm != "pre":
        return f"norm={config.norm!r}: Llama applies RMSNorm before each sublayer (norm='pre') only"
    if config.position != "rope":
        return f"position={config.position!r} (NoPE): Llama always rotates queries and keys (position='rope')"
    if config.ffn != "swiglu":
        return f"ffn={config.ffn!r}: Llama's feed-forward is the gated SwiGLU (ffn='swiglu')"
    if config.qk_norm:
        return "qk_norm=True: Llama has no RMSNorm on queries and keys"
    if config.logit_softcap is not None:
        return f"logit_softcap={config.logit_softcap}: Llama's logits are not soft-capped"
    if config.value_residual:
        return "value_residual=True: Llama's layers do not mix in the first layer's values"
    return None


def check_exportable(config: ModelConfig) -> None:
    """UsageError, one line naming the setting, for a model Llama cannot compute."""
    refusal = export_refusal(config)
    if refusal:
        raise UsageError(f"cannot export to the Llama format: {refusal}")


def llama_config(config: ModelConfig, dtype: str, eos_id: int | None) -> dict[str, Any]:
    """config.json of LlamaForCausalLM for `config` (exportable), its weights stored in `dtype`.

    RoPE's theta is written both as transformers 5 reads it (rope_parameters) and as 4.x does
    (rope_theta), so either version loads the folder."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.rmsnorm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        # Documents start after <|endoftext|> here, so it is both the end of one and the start of the next.
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def import_refusal(values: dict[str, Any]) -> str | None:
    """Why a Llama config.json describes a model our forward cannot compute; None if it can."""
    if values.get("model_type") != "llama":
        return f"model_type {values.get('model_type')!r}: only Llama models (model_type 'llama') can be imported"
    heads, hidden = values.get("num_attention_heads"), values.get("hidden_size")
    kv_heads = values.get("num_key_value_heads")
    if kv_heads is not None and kv_heads != heads:
        return f"num_key_value_heads {kv_heads} != num_attention_heads {heads}: grouped-query attention is not supported"
    head_dim = values.get("head_dim")
    if head_dim is not None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and head_dim * heads != hidden:
        return f"head_dim {head_dim} is not hidden_size / num_attention_heads ({hidden} / {heads})"
    if values.get("hidden_act", "silu") != "silu":
        return f"hidden_act {values['hidden_act']!r}: only the SwiGLU feed-forward (hidden_act 'silu') is supported"
    for bias in ("attention_bias", "mlp_bias"):
        if values.get(bias):
            return f"{bias} true: biases are not supported"
    return _rope_refusal(values)


def _rope(values: dict[str, Any]) -> Any:
    """The RoPE settings: transformers 5's rope_parameters, else 4.x's rope_scaling."""
    return values.get("rope_parameters") or values.get("rope_scaling") or {}


def _rope_refusal(values: dict[str, Any]) -> str | None:
    rope = _rope(values)
    if not isinstance(rope, dict) or any(isinstance(v, dict) for v in rope.values()):
        return f"rope_parameters {rope!r}: only one plain RoPE for every layer is supported"
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        return f"rope scaling {kind!r}: only plain RoPE (rope_type 'default') is supported"
    partial = rope.get("partial_rotary_factor", values.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        return f"partial_rotary_factor {partial}: RoPE over part of each head is not supported"
    return None


def model_config_from_llama(values: dict[str, Any], source: str) -> ModelConfig:
    """Our ModelConfig of a LlamaForCausalLM config.json; UsageError naming `source` and the
    field for one that is missing, invalid or describes a feature we lack."""
    refusal = import_refusal(values)
    if refusal:
        raise UsageError(f"{source}: {refusal}")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [name for name in required if name not in values]
    if missing:
        raise UsageError(f"{source}: missing {', '.join(missing)}")
    rope = _rope(values)
    try:
        return ModelConfig(
            vocab_size=values["vocab_size"],
            context_length=values.get("max_position_embeddings", LLAMA_CONTEXT),
            d_model=values["hidden_size"],
            num_layers=values["num_hidden_layers"],
            num_heads=values["num_attention_heads"],
            d_ff=values["intermediate_size"],
            rope_theta=float(rope.get("rope_theta", values.get("rope_theta", LLAMA_ROPE_THETA))),
            tie_embeddings=values.get("tie_word_embeddings", False),
            rmsnorm_eps=float(values.get("rms_norm_eps", LLAMA_RMS_NORM_EPS)),
        )
    except (ValueError, TypeError) as error:
        raise UsageError(f"{source}: {error}") from error
