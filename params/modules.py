"""A thin nn.Module shell over the pure model, for code that wants a module.

The shell holds a parameter pytree as nn.Parameters (so state_dict names are the pytree's dotted
names) and its forward calls the pure function with that pytree. No math lives here."""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from core import model
from core.config import ModelConfig
from core.tree import Tree
from params.init import init_from_shapes, param_shapes


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


class TransformerLM(PytreeModule):
    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None, device=None, dtype=torch.float32):
        # Like torch's own modules, a shell built without a generator draws from torch's global RNG.
        super().__init__(init_from_shapes(param_shapes(config), generator, device=device, dtype=dtype))
        self.config = config

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]:
        return model.forward(self.tree(), tokens, self.config)
