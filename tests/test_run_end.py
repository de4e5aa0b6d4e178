"""How a run ends and what it leaves: final.pt is the last checkpoint under a second name (one file
on disk), resuming a finished run says so and changes nothing, and a run that diverges names one
step, the same in its message, its summary and its last metrics row, alone or as one of K variants."""

import os
import re
from pathlib import Path

import orjson
import torch

from pipelines.training.cli import main
from pipelines.training.config.config import resolve_config
from pipelines.training.run import start as start_module
from pipelines.training.run.loop import train_variants
from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.storage.run_dir import FINAL, checkpoint_path
from tests.runs import trainer_argv


TINY = {
    "model.vocab_size": 264, "model.context_length": 16, "model.d_model": 16, "model.num_layers": 1, "model.num_heads": 2,
    "data.batch_size": 4, "schedule.warmup_steps": 2, "log_every": 2, "eval.every": 4, "eval.windows": 4,
    "checkpoint_every": 4, "sample.count": 1, "sample.tokens": 4, "max_steps": 6,
}


def arguments(byte_data_dir: Path, run_dir: Path, **settings) -> list[str]:
    return trainer_argv(byte_data_dir, run_dir, TINY | settings)


def files_of(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {str(path.relative_to(run_dir)): (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(run_dir.rglob("*")) if path.is_file()}


def test_final_is_the_last_checkpoint_under_a_second_name_and_a_finished_run_resumes_to_nothing(byte_data_dir, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert main(arguments(byte_data_dir, run_dir)) == 0
    last, final = checkpoint_path(run_dir), checkpoint_path(run_dir, FINAL)
    assert os.path.samefile(last, final) and read_train_state(final)["step"] == 6  # one file on disk, loadable by either name
    assert (run_dir / "samples.txt").read_text().strip()
    before = files_of(run_dir)

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run opened (and could re-encode) its data")

    monkeypatch.setattr(start_module, "open_training_data", no_data)
    capsys.readouterr()
    assert main([*arguments(byte_data_dir, run_dir), "--resume"]) == 0
    assert f"{run_dir} is complete (step 6 of max_steps 6); nothing to do" in capsys.readouterr().err
    assert files_of(run_dir) == before  # no samples, summary, metrics or checkpoint rewritten

    monkeypatch.undo()  # more steps: the run goes on, and final.pt follows the new last checkpoint
    assert main([*arguments(byte_data_dir, run_dir, max_steps=8), "--resume"]) == 0
    assert os.path.samefile(last, final) and read_train_state(final)["step"] == 8


def named_step(message: str) -> int:
    return int(re.search(r"at step (\d+)", message).group(1))


def test_a_run_that_diverges_names_one_step_everywhere(byte_data_dir, tmp_path, monkeypatch):
    original = start_module.make_train_step

    def failing_from_step_5(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def step(state, batch):
            if state.step + 1 >= 5:
                return state, {"loss": torch.tensor(float("nan")), "grad_norm": torch.tensor(1.0), "applied": False}
            return step_fn(state, batch)

        return step

    monkeypatch.setattr(start_module, "make_train_step", failing_from_step_5)
    run_dir = tmp_path / "run"
    assert main(arguments(byte_data_dir, run_dir)) == 1
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "diverged" and named_step(summary["message"]) == summary["step"] == 5
    assert read_metrics(run_dir)[-1]["step"] == 5 and read_metrics(run_dir)[-1]["event"] == "diverged"


def test_a_variant_that_diverges_names_one_step_everywhere(byte_data_dir, tmp_path):
    fixed = TINY | {"data.path": str(byte_data_dir), "optim.max_grad_norm": 1e30, "schedule.warmup_steps": 0, "sample.count": 0}
    configs = [resolve_config("tinystories", "cpu-small", fixed | {"run_dir": str(tmp_path / name), "schedule.lr": lr})
               for name, lr in (("ok", 1e-3), ("boom", 1e6))]
    assert train_variants(configs) == [(tmp_path / "ok", "completed"), (tmp_path / "boom", "diverged")]
    summary = orjson.loads((tmp_path / "boom" / "summary.json").read_bytes())
    assert named_step(summary["message"]) == summary["step"] == read_metrics(tmp_path / "boom")[-1]["step"]
