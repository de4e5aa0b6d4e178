"""Building parameter pytrees: the model's shapes by name, and the handout's initialisation.

Linear weights: truncated normal, std sqrt(2 / (d_in + d_out)), cut at 3 std; embeddings: std 1,
cut at 3; RMSNorm gains (QK-norm's too): ones. A tied embedding is also the output head and takes
the head's linear init, std sqrt(2 / (vocab + d_model)). With zero_init_out_proj the attention
output and FFN down projections start at zero, so every block starts as the identity; the value
residual's mixing scalars start at 0.5. Randomness comes only from the generator passed in
(None, for the module shell only: torch's global RNG, as torch's own modules do)."""

import math
from typing import Literal

import torch
from torch import Tensor

from core.config import ModelConfig
from core.tree import Tree
from params.tree import unflatten

Kind = Literal["linear", "zero", "embedding", "norm", "value_lambda"]
Shapes = dict[str, tuple[Kind, tuple[int, ...]]]


def block_shapes(config: ModelConfig, index: int = 0) -> Shapes:
    """Names (relative to one block), kinds and shapes of the parameters of block `index`."""
    d, f = config.d_model, config.d_ff
    out_kind: Kind = "zero" if config.zero_init_out_proj else "linear"
    shapes: Shapes = {f"attn.{name}.weight": ("linear", (d, d)) for name in ("q_proj", "k_proj", "v_proj")}
    shapes["attn.output_proj.weight"] = (out_kind, (d, d))
    if config.qk_norm:
        shapes["attn.q_norm.weight"] = ("norm", (config.head_dim,))
        shapes["attn.k_norm.weight"] = ("norm", (config.head_dim,))
    if config.value_residual and index > 0:
        # Not in block 0: its v1 is its own v, where the scalar would mix nothing and never learn.
        shapes["attn.value_lambda"] = ("value_lambda", ())
    if config.norm != "none":
        shapes["ln1.weight"] = ("norm", (d,))
        shapes["ln2.weight"] = ("norm", (d,))
    shapes["ffn.w1.weight"] = ("linear", (f, d))
    shapes["ffn.w2.weight"] = (out_kind, (d, f))
    if config.ffn == "swiglu":
        shapes["ffn.w3.weight"] = ("linear", (f, d))
    return shapes


def param_shapes(config: ModelConfig) -> Shapes:
    """Every parameter of the language model by its state-dict name."""
    # Tied, the matrix is the output head too, and the head's scale sets the initial logits: std 1
    # would give logits of std ~sqrt(d_model) and an initial loss ~10x ln(vocab) (87 vs 7.6 at
    # vocab 2048, d_model 128); the linear init keeps them as small as an untied head's.
    embedding_kind: Kind = "linear" if config.tie_embeddings else "embedding"
    shapes: Shapes = {"token_embeddings.weight": (embedding_kind, (config.vocab_size, config.d_model))}
    for i in range(config.num_layers):
        shapes.update({f"layers.{i}.{name}": spec for name, spec in block_shapes(config, i).items()})
    if config.norm == "pre":
        shapes["ln_final.weight"] = ("norm", (config.d_model,))
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = ("linear", (config.vocab_size, config.d_model))
    return shapes


def init_tensor(kind: Kind, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    if kind == "norm":
        return torch.ones(shape)
    if kind == "value_lambda":
        return torch.full(shape, 0.5)  # half the layer's own values, half the first layer's
    std = 1.0 if kind == "embedding" else math.sqrt(2.0 / (shape[0] + shape[1]))
    drawn = torch.nn.init.trunc_normal_(torch.empty(shape), std=std, a=-3 * std, b=3 * std, generator=generator)
    # A zero projection still takes its draw, so a seed gives the same other weights with the switch
    # on or off: the ablation changes one thing.
    return drawn.zero_() if kind == "zero" else drawn


def init_from_shapes(
    shapes: Shapes, generator: torch.Generator | None, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tree:
    # Drawn on the CPU, where the generator lives, so a seed gives the same model on every device.
    flat = {name: init_tensor(kind, shape, generator).to(device=device, dtype=dtype) for name, (kind, shape) in shapes.items()}
    return unflatten(flat)


def init_params(
    config: ModelConfig, generator: torch.Generator, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tree:
    """A freshly initialised parameter pytree for `config`."""
    return init_from_shapes(param_shapes(config), generator, device=device, dtype=dtype)


def count_params(config: ModelConfig) -> int:
    return sum(math.prod(shape) for _, shape in param_shapes(config).values())
