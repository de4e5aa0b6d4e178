"""What the trainer writes around its steps: a start that fails leaves no run directory (or only
what a retry reuses), a resumed run's metrics never repeat a step, and a broken run tokenizer is
named by its folder. Through the command line (`cli.main`) and the training function."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from core.errors import UsageError
from pipelines.training.cli import main
from pipelines.training.run import start as start_module
from pipelines.training.run.loop import train
from pipelines.training.storage.metrics import MetricsLog, cut_metrics
from pipelines.training.storage.run_dir import CONFIG_FILE, FINAL, METRICS_FILE, SUMMARY_FILE, checkpoint_path, remove_if_unstarted
from tests.inputs import EOT, STORY
from tests.commands import ROOT
from tests.runs import TINY, tiny_config, trainer_command, wait_for_progress

TEXT_FLAGS = ["--model.vocab_size", "300", "--model.context_length", "16", "--model.d_model", "32", "--model.num_layers", "1",
              "--model.num_heads", "2", "--data.batch_size", "4", "--eval.windows", "4", "--sample.count", "0", "--max_steps", "2"]


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "text"
    directory.mkdir()
    story = STORY + EOT + "\n"
    (directory / "train.txt").write_text(story * 60, encoding="utf-8")
    (directory / "valid.txt").write_text(story * 10, encoding="utf-8")
    return directory


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_an_empty_train_split_is_refused_before_the_run_directory_or_the_cache_exists(text_dir, cache, tmp_path, capsys):
    (text_dir / "train.txt").write_text("")
    with pytest.raises(SystemExit) as refused:
        main(["--data.path", str(text_dir), "--run_dir", str(tmp_path / "run"), *TEXT_FLAGS])
    assert refused.value.code == 2
    assert one_error_line(capsys) == f"error: {text_dir / 'train.txt'} is empty: there is nothing to train or validate on"
    assert not (tmp_path / "run").exists() and not cache.exists()


def test_a_start_that_fails_after_taking_the_run_directory_removes_it(token_dir, tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise UsageError("refused while building the step")
    monkeypatch.setattr(start_module, "make_train_step", refused)
    with pytest.raises(UsageError, match="refused while building the step"):
        train(tiny_config(token_dir, tmp_path / "run", {"max_steps": 2}))
    assert not (tmp_path / "run").exists()


def test_only_a_run_directory_holding_nothing_of_a_run_is_removed(tmp_path):
    run_dir = tmp_path / "run"
    for keep in ("notes.md", "checkpoints", METRICS_FILE):
        run_dir.mkdir()
        for name in (CONFIG_FILE, ".lock", ".config.json.tmp12-0123abcd"):
            (run_dir / name).write_text("{}")
        (run_dir / "tokenizer").mkdir()
        (run_dir / keep).mkdir() if keep == "checkpoints" else (run_dir / keep).write_text('{"step": 1}\n')
        assert not remove_if_unstarted(run_dir) and (run_dir / keep).exists()
        shutil.rmtree(run_dir)
    run_dir.mkdir()
    (run_dir / METRICS_FILE).write_bytes(b"")
    assert remove_if_unstarted(run_dir) and not run_dir.exists()


def test_resuming_cuts_the_rows_a_killed_run_logged_after_its_last_checkpoint(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(token_dir, run_dir, {"max_steps": 10}))
    at_ten = checkpoint_path(run_dir).read_bytes()
    train(tiny_config(token_dir, run_dir, {"max_steps": 18}), resume=True)  # logs 15 and 18
    # As if killed at step 18, after logging step 15 and before the checkpoint of step 20:
    checkpoint_path(run_dir).write_bytes(at_ten)
    for name in (checkpoint_path(run_dir, FINAL), run_dir / SUMMARY_FILE):
        name.unlink()
    train(tiny_config(token_dir, run_dir, {"max_steps": 20}), resume=True)
    rows = [orjson.loads(line) for line in (run_dir / METRICS_FILE).read_bytes().splitlines()]
    assert [row["step"] for row in rows if "train_loss" in row] == [5, 10, 15, 20]
    assert [row["step"] for row in rows if "val_loss" in row] == [10, 20]


def test_cutting_keeps_rows_up_to_the_step_and_what_it_cannot_read(tmp_path):
    lines = [b'{"step": 5, "train_loss": 3}\n', b'{"step": 10, "val_loss": 2}\n', b"[1, 2]\n", b'{"step": 15, "train_loss": 1}\n']
    (tmp_path / METRICS_FILE).write_bytes(b"".join(lines))
    assert cut_metrics(tmp_path, 10) and (tmp_path / METRICS_FILE).read_bytes() == b"".join(lines[:3])
    assert not cut_metrics(tmp_path, 10)
    MetricsLog(tmp_path, step=0).close()  # a fresh start drops every row of a run that never checkpointed
    assert (tmp_path / METRICS_FILE).read_bytes() == b"[1, 2]\n"


def test_an_edited_run_tokenizer_is_named_by_its_folder_on_resume(text_dir, cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--data.path", str(text_dir), "--run_dir", str(run_dir), *TEXT_FLAGS]) == 0
    vocab = run_dir / "tokenizer" / "vocab.json"
    entries = json.loads(vocab.read_text(encoding="utf-8"))
    del entries[max(entries, key=entries.get)]  # the last merge's token
    vocab.write_text(json.dumps(entries), encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["--resume", "--run_dir", str(run_dir), "--max_steps", "3"])
    assert refused.value.code == 2
    assert one_error_line(capsys).startswith(f"error: tokenizer folder {run_dir / 'tokenizer'} does not hold one tokenizer: merge ")

    vocab.write_text(vocab.read_text(encoding="utf-8")[:100], encoding="utf-8")  # truncated
    with pytest.raises(SystemExit) as refused:
        main(["--resume", "--run_dir", str(run_dir), "--max_steps", "3"])
    assert refused.value.code == 2
    assert one_error_line(capsys).startswith(f"error: {vocab} is not a valid vocab.json: JSONDecodeError")


@pytest.mark.slow
def test_kill_9_at_random_moments_and_resume_never_repeats_a_step_in_the_metrics(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    base = trainer_command(token_dir, run_dir, {**TINY, "log_every": 1, "eval.every": 3, "checkpoint_every": 7}, "--max_steps", "60")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(4):
        command = base + (["--resume"] if checkpoint_path(run_dir).exists() else [])
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_progress(process, run_dir, rows=5 + 3 * attempt, timeout=300)  # kill after a few more rows, at a varying count
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert subprocess.run(base + ["--resume"], cwd=ROOT, env=env, capture_output=True, timeout=600).returncode == 0
    rows = [orjson.loads(line) for line in (run_dir / METRICS_FILE).read_bytes().splitlines()]
    assert [row["step"] for row in rows if "train_loss" in row] == list(range(1, 61))
    assert [row["step"] for row in rows if "val_loss" in row] == list(range(3, 61, 3))
