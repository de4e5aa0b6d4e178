"""`python -m pipelines.export --run RUN [--checkpoint FILE] --out DIR [--dtype bfloat16]`.

Writes a Hugging Face `transformers` folder of a trained run, which
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load:

    config.json             LlamaForCausalLM's config (params/hf/config.py)
    model.safetensors       the weights, renamed and RoPE-reordered (params/hf/weights.py)
    generation_config.json  end-of-text id; ids no tokenizer token has are suppressed
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   the run's BPE (tokenizer_files.py)
    README.md               a model card from the run's records (model_card.py)

Everything is checked before anything is written: --out must not exist, the run's checkpoint and
tokenizer must load and belong together, and the model must be one Llama computes (post-norm,
NoPE, ... are refused by name). The folder appears whole or not at all.
"""

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from core.config import ModelConfig
from core.errors import UsageError
from core.tokenizer import Tokenizer
from params.hf.config import check_exportable, llama_config
from params.hf.files import require
from params.hf.weights import to_hf_state_dict
from pipelines.export.model_card import model_card
from pipelines.export.tokenizer_files import as_json, special_tokens_map, tokenizer_config, tokenizer_json
from pipelines.command import command
from pipelines.files.atomic import build_folder, remove_stale_temporaries
from pipelines.files.lock import hold
from pipelines.flags import CommandParser
from pipelines.generate import end_of_text_id, load_run_and_step
from pipelines.training.storage.run_dir import checkpoint_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
               dtype: str = "float32") -> Path:
    """Write the `transformers` folder of the run's checkpoint (default: its last) to `out`."""
    run_dir, out = Path(run_dir), Path(out)
    check_out(out)
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: must be one of {', '.join(DTYPES)}")
    safetensors_torch = require("safetensors.torch")
    checkpoint = Path(checkpoint) if checkpoint else checkpoint_path(run_dir)
    params, config, tokenizer, step = load_run_and_step(run_dir, checkpoint, torch.device("cpu"))
    check_exportable(config)
    check_vocabulary(tokenizer, config)
    weights = safetensors_torch.save(to_hf_state_dict(params, config, DTYPES[dtype]), metadata={"format": "pt"})
    files = {
        "config.json": as_json(llama_config(config, dtype, end_of_text_id(tokenizer))),
        "generation_config.json": as_json(generation_config(tokenizer, config)),
        "model.safetensors": weights,
        "tokenizer.json": as_json(tokenizer_json(tokenizer)),
        "tokenizer_config.json": as_json(tokenizer_config(tokenizer, config.context_length)),
        "special_tokens_map.json": as_json(special_tokens_map(tokenizer)),
        "README.md": model_card(run_dir, config, step, checkpoint, dtype).encode("utf-8"),
    }
    write_folder(out, files)
    return out


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """`out` holding `files`, whole or not at all, under the output's lock; on an error, the parent
    folders made for it are removed again, so a failed export leaves nothing behind."""
    made = [parent for parent in out.absolute().parents if not parent.exists()]  # deepest first
    try:
        with hold(out) as lock:
            if lock.waited and os.path.lexists(out):
                raise UsageError(f"--out {out} was written by another export while this one waited for it")
            remove_stale_temporaries(out.parent, of=out.name)  # a killed export's half folder
            with build_folder(out) as folder:  # fsyncs the files and renames the folder whole
                for name, data in files.items():
                    (folder / name).write_bytes(data)
    except BaseException:
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def check_out(out: Path) -> None:
    """--out must be a new folder in a folder this process may write in."""
    if os.path.lexists(out):
        raise UsageError(f"--out {out} already exists; export writes a new folder and replaces nothing")
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot create a folder in {existing}")


def check_vocabulary(tokenizer: Tokenizer, config: ModelConfig) -> None:
    if max(tokenizer.vocab) >= config.vocab_size:
        raise UsageError(f"the tokenizer has ids up to {max(tokenizer.vocab)}, beyond the model's vocab_size {config.vocab_size}")


def generation_config(tokenizer: Tokenizer, config: ModelConfig) -> dict:
    """Defaults of `generate` matching `just generate`: stop at <|endoftext|>, and never draw an
    id the tokenizer lacks (rows of a vocabulary larger than the tokenizer's, which no data trained)."""
    eos_id = end_of_text_id(tokenizer)
    unused = list(range(max(tokenizer.vocab) + 1, config.vocab_size))
    values = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    return {**values, "suppress_tokens": unused} if unused else values


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m pipelines.export",
                                     description="Export a trained run to a Hugging Face transformers (Llama) folder.")
    parser.add_argument("--run", type=Path, required=True, help="the run directory")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: RUN/checkpoints/last.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to create (must not exist)")
    parser.add_argument("--dtype", default="float32", help=f"dtype of the stored weights: {', '.join(DTYPES)}")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    out = export_run(args.run, args.out, args.checkpoint, args.dtype)
    print(f"exported {args.run} to {out}")


if __name__ == "__main__":
    main()
