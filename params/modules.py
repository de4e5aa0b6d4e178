"""Thin nn.Module shells over the pure functions, for code that wants a module.

A shell holds a parameter pytree as nn.Parameters (so state_dict names are the pytree's dotted
names) and its forward calls the pure function with that pytree. No math lives here."""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from core import attention, layers, model
from core.config import ModelConfig
from core.tree import Tree
from params.init import Shapes, block_shapes, init_from_shapes, param_shapes


class PytreeModule(nn.Module):
    """Registers a pytree's tensors as parameters under their pytree names."""

    def __init__(self, tree: Tree | None = None) -> None:
        super().__init__()
        for key, value in (tree or {}).items():
            if isinstance(value, dict):
                self.add_module(key, PytreeModule(value))
            elif isinstance(value, list):
                self.add_module(key, nn.ModuleList(PytreeModule(item) for item in value))
            else:
                self.register_parameter(key, nn.Parameter(value))

    def tree(self) -> Tree:
        """The parameters as a pytree of the live nn.Parameters (gradients flow to them)."""
        tree: dict = dict(self._parameters)
        for key, child in self._modules.items():
            tree[key] = [item.tree() for item in child] if isinstance(child, nn.ModuleList) else child.tree()
        return tree


def _init(shapes: Shapes, generator: torch.Generator | None, device, dtype) -> Tree:
    # Like torch's own modules, a shell built without a generator draws from torch's global RNG.
    return init_from_shapes(shapes, generator, device=device, dtype=dtype)


class Linear(PytreeModule):
    def __init__(self, in_features: int, out_features: int, generator=None, device=None, dtype=torch.float32):
        super().__init__(_init({"weight": ("linear", (out_features, in_features))}, generator, device, dtype))

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        return layers.linear(self.weight, x)


class Embedding(PytreeModule):
    def __init__(self, num_embeddings: int, embedding_dim: int, generator=None, device=None, dtype=torch.float32):
        super().__init__(_init({"weight": ("embedding", (num_embeddings, embedding_dim))}, generator, device, dtype))

    def forward(self, token_ids: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch d_model"]:
        return layers.embedding(self.weight, token_ids)


class RMSNorm(PytreeModule):
    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=torch.float32):
        super().__init__(_init({"weight": ("norm", (d_model,))}, None, device, dtype))
        self.eps = eps

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        return layers.rmsnorm(self.weight, x, self.eps)


class SwiGLU(PytreeModule):
    def __init__(self, d_model: int, d_ff: int, generator=None, device=None, dtype=torch.float32):
        shapes: Shapes = {
            "w1.weight": ("linear", (d_ff, d_model)),
            "w2.weight": ("linear", (d_model, d_ff)),
            "w3.weight": ("linear", (d_ff, d_model)),
        }
        super().__init__(_init(shapes, generator, device, dtype))

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        p = self.tree()
        return layers.swiglu(p["w1"]["weight"], p["w2"]["weight"], p["w3"]["weight"], x)


class RotaryPositionalEmbedding(nn.Module):
    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        self.theta, self.d_k, self.max_seq_len = theta, d_k, max_seq_len

    def forward(self, x: Float[Tensor, "*batch seq d_k"], token_positions: Int[Tensor, "*#pbatch seq"]) -> Float[Tensor, "*batch seq d_k"]:
        return attention.rope(x, token_positions, self.theta, self.max_seq_len)


class MultiHeadSelfAttention(PytreeModule):
    """Causal multi-head self-attention; with RoPE when theta and max_seq_len are given."""

    def __init__(self, d_model: int, num_heads: int, max_seq_len: int | None = None, theta: float | None = None,
                 generator=None, device=None, dtype=torch.float32):
        names = ("q_proj", "k_proj", "v_proj", "output_proj")
        super().__init__(_init({f"{n}.weight": ("linear", (d_model, d_model)) for n in names}, generator, device, dtype))
        self.num_heads, self.max_seq_len, self.theta = num_heads, max_seq_len, theta

    def forward(self, x: Float[Tensor, "*batch seq d_model"], token_positions: Int[Tensor, "*#pbatch seq"] | None = None) -> Float[Tensor, "*batch seq d_model"]:
        return attention.multihead_self_attention(
            self.tree(), x, self.num_heads, rope_theta=self.theta, max_seq_len=self.max_seq_len, positions=token_positions
        )


class TransformerBlock(PytreeModule):
    def __init__(self, config: ModelConfig, generator=None, device=None, dtype=torch.float32):
        super().__init__(_init(block_shapes(config), generator, device, dtype))
        self.config = config

    def forward(self, x: Float[Tensor, "*batch seq d_model"]) -> Float[Tensor, "*batch seq d_model"]:
        return model.transformer_block(self.tree(), x, self.config)


class TransformerLM(PytreeModule):
    def __init__(self, config: ModelConfig, generator=None, device=None, dtype=torch.float32):
        super().__init__(_init(param_shapes(config), generator, device, dtype))
        self.config = config

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]:
        return model.forward(self.tree(), tokens, self.config)
