"""Resource accounting of the Transformer LM: parameters, forward FLOPs, training memory, time.

Pure arithmetic on a ModelConfig, following the handout's conventions (§3.6, §4.3):
- a matrix product of (m x n) by (n x p) costs 2mnp FLOPs; only matrix products are counted
  (norms, QK-norm, softmax, RoPE, activations, the value residual's mixing and the logit soft-cap
  are lower-order terms);
- attention scores are counted over the full T x T square, as the causal mask does not skip work
  in a plain implementation;
- the backward pass costs twice the forward pass, so a training step costs 3x the forward FLOPs;
- every tensor is float32 (4 bytes); AdamW keeps two moments per parameter.
"""

from dataclasses import dataclass

from core.config import ModelConfig

BYTES_PER_FLOAT = 4
# Per parameter and step: m = b1 m + (1-b1) g (3), v = b2 v + (1-b2) g^2 (4),
# p -= lr_t m / (sqrt(v) + eps) (5: sqrt, add, divide, scale, subtract), p -= lr wd p (2).
ADAMW_FLOPS_PER_PARAM = 14


def params_by_component(config: ModelConfig) -> dict[str, int]:
    """Trainable parameters grouped the way the FLOPs are; the values sum to count_params(config).
    "RMSNorm gains" includes QK-norm's (2 head_dim per layer); the value residual's scalars (one
    per layer after the first) appear only when it is on."""
    d, f, layers = config.d_model, config.d_ff, config.num_layers
    ffn_matrices = 3 if config.ffn == "swiglu" else 2
    norms_per_block = 0 if config.norm == "none" else 2
    qk_norm_gains = 2 * config.head_dim if config.qk_norm else 0
    counts = {
        "token embeddings": config.vocab_size * d,
        "attention projections (Q, K, V, O)": layers * 4 * d * d,
        "feed-forward": layers * ffn_matrices * d * f,
        "RMSNorm gains": layers * (norms_per_block * d + qk_norm_gains) + (d if config.norm == "pre" else 0),
        "LM head": 0 if config.tie_embeddings else config.vocab_size * d,
    }
    if config.value_residual:
        counts["value residual (lambda)"] = layers - 1
    return counts


def forward_flops_by_component(config: ModelConfig, context_length: int | None = None) -> dict[str, int]:
    """Matrix-product FLOPs of one forward pass over one sequence of `context_length` tokens
    (default: the config's context length), by component."""
    t = context_length or config.context_length
    d, f, layers = config.d_model, config.d_ff, config.num_layers
    ffn_matrices = 3 if config.ffn == "swiglu" else 2
    return {
        "attention projections (Q, K, V, O)": layers * 4 * 2 * t * d * d,
        "attention scores (Q K^T)": layers * 2 * t * t * d,  # per head 2 T T d_k, times h heads
        "attention weighted sum (A V)": layers * 2 * t * t * d,
        "feed-forward": layers * ffn_matrices * 2 * t * d * f,
        "LM head": 2 * t * d * config.vocab_size,
    }


def forward_flops(config: ModelConfig, context_length: int | None = None) -> int:
    return sum(forward_flops_by_component(config, context_length).values())


def activation_floats(config: ModelConfig, batch_size: int, context_length: int | None = None) -> dict[str, int]:
    """Activations kept for the backward pass, in floats, with the handout's terms:

    per block: the two RMSNorm outputs, Q/K/V, the Q K^T scores and their softmax (per head),
    the weighted sum, the output projection, and the feed-forward's intermediate values (SiLU or
    ReLU² FFN: W1 x, the activation, W2; SwiGLU adds W3 x and the gated product) - then the final
    RMSNorm, the logits and the cross-entropy's softmax over them. The switches add their outputs:
    QK-norm the normalised Q and K, the value residual the mixed V (after the first layer), the
    soft-cap the capped logits."""
    t = context_length or config.context_length
    bt, d, f, h, layers = batch_size * t, config.d_model, config.d_ff, config.num_heads, config.num_layers
    norms = (0 if config.norm == "none" else 2 * bt * d) + (2 * bt * d if config.qk_norm else 0)
    attention = 3 * bt * d + 2 * batch_size * h * t * t + bt * d + bt * d
    ffn = (4 if config.ffn == "swiglu" else 2) * bt * f + bt * d
    mixed_values = (layers - 1) * bt * d if config.value_residual else 0
    logits = bt * config.vocab_size * (2 if config.logit_softcap is not None else 1)
    return {
        "blocks": layers * (norms + attention + ffn) + mixed_values,
        "final RMSNorm": bt * d if config.norm == "pre" else 0,
        "logits": logits,
        "cross-entropy softmax": bt * config.vocab_size,
    }


@dataclass(frozen=True)
class TrainingMemory:
    """Peak bytes of a float32 AdamW training step."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations


def training_memory(config: ModelConfig, batch_size: int, context_length: int | None = None) -> TrainingMemory:
    params = sum(params_by_component(config).values())
    return TrainingMemory(
        parameters=BYTES_PER_FLOAT * params,
        gradients=BYTES_PER_FLOAT * params,
        optimizer_state=BYTES_PER_FLOAT * 2 * params,  # AdamW's first and second moments
        activations=BYTES_PER_FLOAT * sum(activation_floats(config, batch_size, context_length).values()),
    )


def max_batch_size(config: ModelConfig, memory_bytes: float, context_length: int | None = None) -> int:
    """The largest batch whose training memory fits in `memory_bytes` (0 if not even one):
    memory is a * batch_size + b, so this is floor((memory - b) / a)."""
    fixed = training_memory(config, 0, context_length).total
    per_example = training_memory(config, 1, context_length).total - fixed
    return max(0, int((memory_bytes - fixed) // per_example))


def adamw_update_flops(config: ModelConfig) -> int:
    """FLOPs of the AdamW parameter update alone (elementwise, per parameter)."""
    return ADAMW_FLOPS_PER_PARAM * sum(params_by_component(config).values())


def training_step_flops(config: ModelConfig, batch_size: int, context_length: int | None = None) -> int:
    """One AdamW training step: forward + backward (2x forward) over the batch, plus the update."""
    return 3 * batch_size * forward_flops(config, context_length) + adamw_update_flops(config)


def newton_schulz_flops(config: ModelConfig, steps: int = 5) -> int:
    """Matrix-product FLOPs per training step of Muon's orthogonalisation (core/optim/muon.py) of
    the hidden matrices (attention Q, K, V, O and the feed-forward's): each taken as m x n with
    m <= n, an iteration costs X X^T (2 m^2 n), A^2 (2 m^3) and (bA + cA^2) X (2 m^2 n)."""
    d, f = config.d_model, config.d_ff
    shapes = [(d, d)] * 4 + [(min(d, f), max(d, f))] * (3 if config.ffn == "swiglu" else 2)
    return config.num_layers * steps * sum(4 * m * m * n + 2 * m**3 for m, n in shapes)


def training_seconds(
    config: ModelConfig, steps: int, batch_size: int, peak_flops: float, mfu: float, context_length: int | None = None
) -> float:
    """Wall-clock seconds to train `steps` steps on a chip of `peak_flops` FLOP/s at utilisation `mfu`."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must lie in (0, 1], got {mfu}")
    return steps * training_step_flops(config, batch_size, context_length) / (peak_flops * mfu)
