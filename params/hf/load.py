"""`load_hf(DIR)`: a `transformers` Llama folder as our parameter pytree and ModelConfig."""

import os
from pathlib import Path

from core.config import ModelConfig
from core.errors import UsageError
from core.tree import Tree
from params.hf.config import model_config_from_llama
from params.hf.files import CONFIG_FILE, read_config, read_state_dict
from params.hf.weights import from_hf_state_dict


def load_hf(directory: str | os.PathLike) -> tuple[Tree, ModelConfig]:
    """The parameters (float32, on the CPU) and config of a LlamaForCausalLM folder, such that
    `forward(params, tokens, config)` computes its logits. A folder `just export` wrote, or any
    Llama whose features we have; others (grouped-query attention, rope scaling, biases, other
    activations) are refused in one line naming the field."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a folder")
    config = model_config_from_llama(read_config(directory), str(directory / CONFIG_FILE))
    params = from_hf_state_dict(read_state_dict(directory), config, str(directory))
    return params, config
