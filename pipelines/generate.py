"""Sample from a trained run: `python -m pipelines.generate --run DIR --sample.prompt "Once upon a time"`.

The sampling flags are the trainer's own settings (`--sample.prompt`, `--sample.tokens`,
`--sample.temperature`, `--sample.top_p`, `--sample.count`), so one name serves the samples a run
writes at its end and the ones drawn here.

Loads the run's latest checkpoint (checkpoints/last.pt, or --checkpoint FILE) and the tokenizer
the run copied into RUN/tokenizer, checks they belong together, and prints the stories. Every
setting and the device are checked first; a bad one is one line, before anything is loaded.
"""

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from core.config import ModelConfig
from core.errors import UsageError
from core.sampling import generate
from core.tokenizer import Tokenizer
from core.tree import Tree
from params.load import load_params
from pipelines.command import command
from pipelines.flags import CommandParser, integer, number
from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.hardware.device_check import require_device
from pipelines.tokenizer.store import load_tokenizer
from pipelines.training.storage.run_dir import TOKENIZER_DIR, checkpoint_path

EOT = "<|endoftext|>"  # ends a document: sampling stops at it, and export names it BOS and EOS


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The id of <|endoftext|> when it is one of the tokenizer's special tokens."""
    return tokenizer.encode(EOT)[0] if EOT in tokenizer.special_tokens else None


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
    """`num_samples` continuations of `prompt` (prompt included), each stopping at <|endoftext|>.
    The settings and the device are checked before anything is loaded."""
    check_settings(max_tokens, temperature, top_p, seed, num_samples)
    target = require_device(device)
    params, config, tokenizer = load_run(Path(run_dir), checkpoint, target)
    return sample_stories(params, config, tokenizer, prompt, num_samples, max_tokens, temperature, top_p, seed)


def check_settings(max_tokens: int, temperature: float, top_p: float, seed: int, num_samples: int) -> None:
    """UsageError naming the first setting out of its range (the command line's types check the
    same ranges; this holds them for callers from Python)."""
    if max_tokens < 1:
        raise UsageError(f"--sample.tokens {max_tokens}: must be at least 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"--sample.temperature {temperature}: must be a finite number >= 0 (0: greedy)")
    if not 0 < top_p <= 1:  # also false for nan
        raise UsageError(f"--sample.top_p {top_p}: must be in (0, 1]")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed {seed}: must be in [0, 2**63)")
    if num_samples < 1:
        raise UsageError(f"--sample.count {num_samples}: must be at least 1")


def load_run(run_dir: Path, checkpoint: str | Path | None, device: torch.device) -> tuple[Tree, ModelConfig, Tokenizer]:
    """The parameters (on `device`), model config and tokenizer of a run, checked to belong
    together (read_train_state checks the checkpoint itself: fields, shapes, finite weights)."""
    params, config, tokenizer, _ = load_run_and_step(run_dir, checkpoint, device)
    return params, config, tokenizer


def load_run_and_step(run_dir: Path, checkpoint: str | Path | None, device: torch.device) -> tuple[Tree, ModelConfig, Tokenizer, int]:
    """What `load_run` returns, and the step the checkpoint was saved at, from one read of it."""
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    tokenizer_dir = run_dir / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise UsageError(f"{tokenizer_dir} not found: the run was trained on pre-encoded tokens without a tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    saved = read_train_state(checkpoint or checkpoint_path(run_dir))
    if saved["tokenizer"] is not None and saved["tokenizer"] != tokenizer.fingerprint():
        raise UsageError(f"{tokenizer_dir} is not the tokenizer the checkpoint was trained with (fingerprints differ)")
    config = ModelConfig.from_dict(saved["model_config"])
    params = load_params({name: tensor.to(device) for name, tensor in saved["params"].items()}, config)
    return params, config, tokenizer, saved["step"]


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
    eos_id = end_of_text_id(tokenizer)
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


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m pipelines.generate", description="Sample text from a trained run.")
    parser.add_argument("--run", type=Path, required=True, help="the run directory")
    parser.add_argument("--sample.prompt", dest="prompt", default="Once upon a time", metavar="TEXT")
    parser.add_argument("--sample.tokens", dest="tokens", type=integer(1), default=256, metavar="N",
                        help="new tokens per story at most (default 256)")
    parser.add_argument("--sample.temperature", dest="temperature", type=number(0), default=0.8, metavar="T",
                        help="0 for greedy decoding (default 0.8)")
    parser.add_argument("--sample.top_p", dest="top_p", type=number(0, 1, open_low=True), default=0.95, metavar="P",
                        help="nucleus sampling mass, in (0, 1] (default 0.95)")
    parser.add_argument("--sample.count", dest="count", type=integer(1), default=1, metavar="N", help="stories (default 1)")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: RUN/checkpoints/last.pt)")
    parser.add_argument("--device", default="auto")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # a shell passed bytes that are not UTF-8 (Python keeps them as surrogates)
        raise UsageError("--sample.prompt is not valid UTF-8 text") from None
    stories = generate_text(
        args.run, args.prompt, args.tokens, args.temperature, args.top_p, args.seed, args.count, args.checkpoint, args.device,
    )
    print("\n\n---\n\n".join(stories))


if __name__ == "__main__":
    sys.exit(main())
