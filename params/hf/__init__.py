"""To and from Hugging Face `transformers`' Llama format (LlamaForCausalLM).

The handout's model with pre-norm RMSNorm, RoPE, SwiGLU and no biases is Llama; these modules map
its config (config.py), its parameter names (names.py) and RoPE's layout (rope.py) onto Llama's,
convert whole state dicts (weights.py) and read Llama folders (files.py, load.py). Only
`safetensors` is needed (the `hf` extra), and only to read or write .safetensors files.
"""

from params.hf.config import check_exportable, export_refusal, llama_config, model_config_from_llama
from params.hf.load import load_hf
from params.hf.weights import from_hf_state_dict, to_hf_state_dict

__all__ = [
    "check_exportable", "export_refusal", "from_hf_state_dict", "llama_config", "load_hf", "model_config_from_llama",
    "to_hf_state_dict",
]
