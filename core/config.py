"""The model's hyper-parameters: one frozen, validated dataclass."""

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

NORMS = ("pre", "post", "none")
POSITIONS = ("rope", "none")
FFNS = ("swiglu", "silu", "relu2")
# "torch": torch's fused ops (F.scaled_dot_product_attention, F.rms_norm, F.cross_entropy);
# "reference": the handout's math written out, the oracle the fused path is tested against.
KERNELS = ("torch", "reference")


def default_d_ff(d_model: int, ffn: str = "swiglu") -> int:
    """The feed-forward width the handout uses: about 8/3 d_model rounded to a multiple of 64 for
    SwiGLU (1344 for d_model 512), which matches the 4 d_model of a two-matrix FFN (SiLU or ReLU²)
    in parameters."""
    if ffn in ("silu", "relu2"):
        return 4 * d_model
    return max(64, round(8 * d_model / 3 / 64) * 64)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int | None = None  # None: default_d_ff(d_model, ffn)
    rope_theta: float = 10000.0
    # Plain str rather than Literal so that a bad value reaches __post_init__'s message.
    norm: str = "pre"  # one of NORMS: RMSNorm before each sublayer, after the residual, or none
    position: str = "rope"  # one of POSITIONS: rotary embeddings, or none (NoPE)
    ffn: str = "swiglu"  # one of FFNS: gated SwiGLU, the plain w2 silu(w1 x), or w2 relu(w1 x)^2
    tie_embeddings: bool = False
    rmsnorm_eps: float = 1e-5
    kernels: str = "torch"  # one of KERNELS: the same function either way, to fp32 rounding
    # The switches of the 2024-25 speedrun records, each off by default (old config dicts without
    # them load as the model they described).
    qk_norm: bool = False  # RMSNorm (learned gain over head_dim) on each head's queries and keys, before RoPE
    logit_softcap: float | None = None  # c: logits = c tanh(logits / c), in training and sampling
    zero_init_out_proj: bool = False  # attention output and FFN down projections start at zero
    value_residual: bool = False  # later layers mix the first layer's values in: v = lam v + (1 - lam) v1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", default_d_ff(self.d_model, self.ffn))
        elif isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise ValueError(f"ModelConfig.d_ff must be a positive integer or None, got {self.d_ff!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.position == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head dimension, got d_model/num_heads = {self.head_dim}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be positive, got {self.rope_theta!r}")
        if not self.rmsnorm_eps > 0:
            raise ValueError(f"ModelConfig.rmsnorm_eps must be positive, got {self.rmsnorm_eps!r}")
        for name, allowed in (
            ("norm", NORMS), ("position", POSITIONS), ("ffn", FFNS), ("kernels", KERNELS)
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("tie_embeddings", "qk_norm", "zero_init_out_proj", "value_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        self._check_softcap()

    def _check_softcap(self) -> None:
        cap = self.logit_softcap
        if cap is None:
            return
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (cap > 0 and math.isfinite(cap)):
            raise ValueError(f"ModelConfig.logit_softcap must be a positive finite number or None, got {cap!r}")
        object.__setattr__(self, "logit_softcap", float(cap))  # 30 and 30.0 are one config

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def architecture_changes(self, other: "ModelConfig") -> list[str]:
        """The fields in which `other` is another model; `kernels` is not one of them: it only
        chooses how the same function is computed."""
        return [f.name for f in fields(self) if f.name != "kernels" and getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)
