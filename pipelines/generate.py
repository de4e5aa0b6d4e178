"""Sample from a trained run: `python -m pipelines.generate --run DIR --prompt "Once upon a time"`.

Loads the run's latest checkpoint (checkpoints/last.pt, or --checkpoint FILE) and the tokenizer
the run copied into RUN/tokenizer, checks they belong together, and prints the stories.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from core.config import ModelConfig
from core.sampling import generate
from core.tokenizer import Tokenizer
from core.tree import Tree
from params.load import load_params
from pipelines.training.checkpoint import read_train_state
from pipelines.training.device import select_device
from pipelines.tokenizer.store import load_tokenizer
from pipelines.training.run_dir import TOKENIZER_DIR, checkpoint_path

EOS = "<|endoftext|>"


def generate_text(
    run_dir: str | Path,
    prompt: str,
    max_tokens: int = 256,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    num_samples: int = 1,
    checkpoint: str | Path | None = None,
    device: str = "auto",
) -> list[str]:
    """`num_samples` continuations of `prompt` (prompt included), each stopping at <|endoftext|>."""
    run_dir = Path(run_dir)
    tokenizer_dir = run_dir / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"{tokenizer_dir} not found: the run was trained on pre-encoded tokens without a tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    saved = read_train_state(checkpoint or checkpoint_path(run_dir))
    if saved["tokenizer"] is not None and saved["tokenizer"] != tokenizer.fingerprint():
        raise ValueError(f"{tokenizer_dir} is not the tokenizer the checkpoint was trained with (fingerprints differ)")
    config = ModelConfig.from_dict(saved["model_config"])
    target = select_device(device)
    params = load_params({name: tensor.to(target) for name, tensor in saved["params"].items()}, config)
    return sample_stories(params, config, tokenizer, prompt, num_samples, max_tokens, temperature, top_p, seed)


def sample_stories(
    params: Tree,
    config: ModelConfig,
    tokenizer: Tokenizer,
    prompt: str,
    num_samples: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int = 0,
) -> list[str]:
    """Continuations of `prompt` (prompt included), each stopping at <|endoftext|>."""
    eos_id = tokenizer.encode(EOS)[0] if EOS in tokenizer.special_tokens else None
    # An empty prompt starts a fresh document, as after the end of the previous one.
    prompt_ids = tokenizer.encode(prompt) or ([eos_id] if eos_id is not None else [])
    generator = torch.Generator().manual_seed(seed)
    stories = []
    for _ in range(num_samples):
        ids = generate(
            params, config, prompt_ids, max_tokens, temperature, top_p, generator, eos_id,
            num_valid_tokens=max(tokenizer.vocab) + 1,
        )
        stories.append(prompt + tokenizer.decode([i for i in ids if i != eos_id]))
    return stories


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.generate", description="Sample text from a trained run.")
    parser.add_argument("--run", type=Path, required=True, help="the run directory")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: RUN/checkpoints/last.pt)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        stories = generate_text(
            args.run, args.prompt, args.max_tokens, args.temperature, args.top_p, args.seed, args.num_samples,
            args.checkpoint, args.device,
        )
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    print("\n\n---\n\n".join(stories))


if __name__ == "__main__":
    main()
