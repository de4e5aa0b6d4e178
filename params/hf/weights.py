"""Our parameter pytree and LlamaForCausalLM's state dict, both ways: names, RoPE's row order, dtype."""

import torch
from torch import Tensor

from core.config import ModelConfig
from core.errors import UsageError
from core.tree import Tree
from params.hf.config import check_exportable
from params.hf.names import hf_names, is_rotated
from params.hf.rope import halves_to_pairs, pairs_to_halves
from params.init import param_shapes
from params.load import PARAM_DTYPE, load_params
from params.tree import flatten

# Buffers that transformers before 4.31 saved with the weights: RoPE's frequencies, recomputed from
# the config on load, so ignored here as transformers ignores them.
_SAVED_BUFFERS = (".rotary_emb.inv_freq",)


def to_hf_state_dict(params: Tree, config: ModelConfig, dtype: torch.dtype = PARAM_DTYPE) -> dict[str, Tensor]:
    """LlamaForCausalLM's state dict for our `params`, every tensor a fresh contiguous CPU one in
    `dtype`. A tied embedding is stored once, as Llama's embed_tokens (its lm_head is tied to it)."""
    check_exportable(config)
    flat = flatten(params)
    state = {}
    for name, theirs in hf_names(config).items():
        tensor = flat[name].detach().to("cpu")
        if is_rotated(name):
            tensor = pairs_to_halves(tensor, config.num_heads)
        state[theirs] = tensor.to(dtype).clone().contiguous()
    return state


def from_hf_state_dict(state: dict[str, Tensor], config: ModelConfig, source: str) -> Tree:
    """Our pytree (float32) of LlamaForCausalLM's state dict for `config`; every name and shape
    is checked, and errors are one line naming `source` and the tensor."""
    state = {name: t for name, t in state.items() if not name.endswith(_SAVED_BUFFERS)}
    names = hf_names(config)
    if config.tie_embeddings:
        _check_tied_head(state, source)
    expected = set(names.values())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        biases = [name for name in unexpected if name.endswith(".bias")]
        if biases:
            raise UsageError(f"{source}: biases are not supported ({biases[0]}{' ...' if len(biases) > 1 else ''})")
        raise UsageError(f"{source}: tensors do not match the config: missing {_few(missing)}, unexpected {_few(unexpected)}")
    shapes = param_shapes(config)
    flat = {}
    for ours, theirs in names.items():
        tensor = state[theirs]
        if not tensor.is_floating_point() or tuple(tensor.shape) != shapes[ours][1]:
            raise UsageError(f"{source}: {theirs} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}, "
                             f"the config expects a floating-point one of shape {shapes[ours][1]}")
        tensor = tensor.to(PARAM_DTYPE)
        flat[ours] = halves_to_pairs(tensor, config.num_heads) if is_rotated(ours) else tensor.contiguous()
    return load_params(flat, config)


def _check_tied_head(state: dict[str, Tensor], source: str) -> None:
    """A tied model may still store its head (older transformers did): it must be the embedding."""
    head = state.pop("lm_head.weight", None)
    embedding = state.get("model.embed_tokens.weight")
    if head is not None and embedding is not None and not torch.equal(head, embedding):
        raise UsageError(f"{source}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight")


def _few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
