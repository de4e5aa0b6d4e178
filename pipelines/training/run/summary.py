"""summary.json: how a run ended (pipelines/training/run/outcome.py), the same fields for a run alone and for each variant trained together."""

from pathlib import Path
from typing import Any

import orjson

from core.config import ModelConfig
from params.init import count_params
from pipelines.files.atomic import write_atomic
from pipelines.training.storage.run_dir import SUMMARY_FILE


def run_summary(
    *,
    status: str,
    step: int,
    wall: float,
    train_loss: float | None,
    val_loss: float | None,
    steps_per_s: float | None,
    tokens_per_step: int,
    flops_per_step: int,
    peak_flops: float,
    model: ModelConfig,
    message: str,
) -> dict[str, Any]:
    """The summary fields; throughput (tokens, FLOPs, MFU per second) is None before any was timed."""

    def rate(per_step: float) -> float | None:
        return None if steps_per_s is None else steps_per_s * per_step

    return {
        "status": status,
        "step": step,
        "tokens": step * tokens_per_step,
        "wall": wall,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "tokens_per_s": rate(tokens_per_step),
        "flops_per_s": rate(flops_per_step),
        "mfu": rate(flops_per_step / peak_flops),
        "parameters": count_params(model),
        "message": message,
    }


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(run_dir / SUMMARY_FILE, orjson.dumps(summary, option=orjson.OPT_INDENT_2))
