"""README.md of an exported model: a model card written from the run's own records.

What the model is (architecture, parameter count), what it saw (dataset, steps, tokens), how well
it did (train and validation loss at the exported step), how it was made (the command and the
run's config.json) and how to load it. Only what the run recorded is stated; a missing record
(no summary.json, no metrics) is said to be missing rather than guessed."""

import json
from pathlib import Path
from typing import Any

import orjson

from core.config import ModelConfig
from params.init import count_params
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.storage.run_dir import CONFIG_FILE, SUMMARY_FILE


def model_card(run_dir: Path, config: ModelConfig, step: int, checkpoint: Path, dtype: str) -> str:
    train_config = _read_json(run_dir / CONFIG_FILE)
    facts = training_facts(run_dir, step)
    dataset = train_config.get("dataset", "unknown")
    data = Path(str((train_config.get("data") or {}).get("path") or "")).name or "not recorded"
    parts = [
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- lmkit\n- llama\n---\n",
        f"# {run_dir.resolve().name}\n",
        f"A {count_params(config):,}-parameter language model trained from scratch with lmkit on {dataset} "
        f"and exported to the Hugging Face `transformers` Llama format (`LlamaForCausalLM`), weights in {dtype}.\n",
        _architecture(config),
        "## Training\n",
        f"- data: {dataset} (`{data}`)",
        f"- exported checkpoint: `{checkpoint.name}`, step {step:,}, {_number(facts['tokens'], ',')} tokens seen",
        f"- train loss {_number(facts['train_loss'], '.4f')}, validation loss {_number(facts['val_loss'], '.4f')} (cross-entropy, nats per token)",
        f"- run status: {facts['status']}\n",
        _provenance(dataset, train_config),
        _usage(config),
    ]
    return "\n".join(parts)


def training_facts(run_dir: Path, step: int) -> dict[str, Any]:
    """Tokens seen and the last train and validation losses at `step`, from metrics.jsonl (or
    summary.json when it describes that step); None for what the run did not record."""
    try:
        rows = [row for row in read_metrics(run_dir) if row["step"] <= step]
    except (OSError, ValueError):
        rows = []
    summary = _read_json(run_dir / SUMMARY_FILE)
    per_step = next((row["tokens"] / row["step"] for row in reversed(rows) if row.get("tokens") and row["step"]), None)
    facts = {
        "tokens": None if per_step is None else round(per_step * step),
        "train_loss": next((row["train_loss"] for row in reversed(rows) if "train_loss" in row), None),
        "val_loss": next((row["val_loss"] for row in reversed(rows) if "val_loss" in row), None),
        "status": "not recorded (no summary.json)",
    }
    if summary.get("step") == step:
        facts.update({key: summary[key] for key in ("tokens", "train_loss", "val_loss", "status") if summary.get(key) is not None})
    return facts


def _architecture(config: ModelConfig) -> str:
    rows = [
        ("parameters", f"{count_params(config):,}"), ("layers", config.num_layers), ("d_model", config.d_model),
        ("heads", config.num_heads), ("feed-forward", f"SwiGLU, d_ff {config.d_ff}"),
        ("context length", config.context_length), ("vocabulary", config.vocab_size),
        ("positions", f"RoPE, theta {config.rope_theta:g}"), ("normalisation", f"pre-norm RMSNorm, eps {config.rmsnorm_eps:g}"),
        ("tied embeddings", "yes" if config.tie_embeddings else "no"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## Architecture\n\n| | |\n|---|---|\n{table}\n"


def _provenance(dataset: str, train_config: dict[str, Any]) -> str:
    if not train_config:
        return "## How it was made\n\nThe run's config.json was not found.\n"
    config = json.dumps(_without_local_paths(train_config), indent=2)
    return (
        "## How it was made\n\n"
        "With lmkit: saved as `train.json`, the run's config below reproduces the run with "
        f"`just train {dataset} --config train.json --run_dir NEW_RUN --data.path DATA`; "
        "`just export --run NEW_RUN --out FOLDER` then writes this folder. (Paths are cut to their last "
        "component: the machine's folders are not part of the model.)\n\n"
        f"```json\n{config}\n```\n"
    )


def _without_local_paths(train_config: dict[str, Any]) -> dict[str, Any]:
    shortened = {**train_config, "data": dict(train_config.get("data") or {})}
    for section, key in ((shortened, "run_dir"), (shortened["data"], "path"), (shortened["data"], "tokenizer")):
        if isinstance(section.get(key), str):
            section[key] = Path(section[key]).name
    return shortened


def _usage(config: ModelConfig) -> str:
    return (
        "## How to use\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")\n'
        'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")\n'
        'ids = tokenizer("Once upon a time", return_tensors="pt").input_ids\n'
        "out = model.generate(ids, max_new_tokens=100, do_sample=True, temperature=0.8, top_p=0.95)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))\n"
        "```\n\n"
        f"The model saw windows of at most {config.context_length} tokens: prompt and continuation together "
        "must stay within that length (`max_position_embeddings`).\n"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return values if isinstance(values, dict) else {}


def _number(value: float | int | None, spec: str) -> str:
    return "not recorded" if value is None else format(value, spec)
