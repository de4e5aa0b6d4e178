"""README's "What is guaranteed", driven through the real command line: a trainer killed with
SIGKILL mid-run (four times at random moments under `just test-all`) resumes exactly and leaves no
debris; one run directory has one writer; a bad argument is one line before any work."""

import os
import random
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
import torch

from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.cli import main
from pipelines.training.storage.run_dir import METRICS_FILE, SUMMARY_FILE, checkpoint_path
from tests.commands import ROOT
from tests.runs import TINY, TRAINER, trainer_argv, wait_for_progress

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def arguments(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return trainer_argv(data, run_dir, {**TINY, "log_every": 1, "checkpoint_every": 2, "eval.every": 20}, *extra)


def params_of(path: Path) -> dict[str, torch.Tensor]:
    return read_train_state(path)["params"]


def test_a_trainer_killed_mid_run_resumes_exactly_and_leaves_no_debris(token_dir, tmp_path):
    killed_and_resumed_equals_uninterrupted(token_dir, tmp_path, max_steps=30, rows_before_kills=[3])


@pytest.mark.slow
def test_a_trainer_killed_at_random_moments_resumes_exactly_and_leaves_no_debris(token_dir, tmp_path):
    moments = random.Random(0)  # after how many new metrics rows (a row a step) each kill comes
    rows = [moments.randint(1, 40) for _ in range(4)]
    killed_and_resumed_equals_uninterrupted(token_dir, tmp_path, max_steps=200, rows_before_kills=rows)


def killed_and_resumed_equals_uninterrupted(data: Path, tmp_path: Path, max_steps: int, rows_before_kills: list[int]) -> None:
    """Trainers started (or resumed) by the real command line and SIGKILLed after the given numbers
    of new metrics rows (with a checkpoint every 2 steps, a kill may land mid-save), then one resume
    to the end: it ends bit for bit where an uninterrupted run does, with no debris. The
    uninterrupted run and the last resume call the command's main() in this process: the same
    code and numbers (on one thread, as the OMP_NUM_THREADS=1 trainers), without another
    interpreter's start."""
    steps = ["--max_steps", str(max_steps)]
    reference = tmp_path / "reference"
    assert main(arguments(data, reference, *steps)) == 0

    run_dir = tmp_path / "killed"
    for rows in rows_before_kills:
        resume = ["--resume"] if checkpoint_path(run_dir).exists() else []
        process = subprocess.Popen([*TRAINER, *arguments(data, run_dir, *steps, *resume)], cwd=ROOT, env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_progress(process, run_dir, rows)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
        # Every kill comes mid-run: one that found the run finished (or failed) fails here.
        assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        if checkpoint_path(run_dir).exists():  # whatever moment the kill hit, last.pt loads
            read_train_state(checkpoint_path(run_dir))
    assert main(arguments(data, run_dir, *steps, "--resume")) == 0

    final, expected = params_of(checkpoint_path(run_dir, "final.pt")), params_of(checkpoint_path(reference, "final.pt"))
    assert final.keys() == expected.keys() and all(torch.equal(final[name], expected[name]) for name in final)
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]  # no temporaries of killed saves
    lines = (run_dir / METRICS_FILE).read_bytes().splitlines()
    assert all(orjson.loads(line) for line in lines)  # no torn row: every line is whole JSON
    assert orjson.loads((run_dir / SUMMARY_FILE).read_bytes())["status"] == "completed"


def test_a_second_trainer_on_a_busy_run_directory_fails_at_once_naming_the_holder(token_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([*TRAINER, *arguments(token_dir, run_dir, "--max_steps", "1000000")], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_progress(first, run_dir)  # the first trainer holds the lock and trains
        assert first.poll() is None
        # The second trainer: the command's main() in this process, a process apart from the first.
        with pytest.raises(SystemExit) as refused:
            main(arguments(token_dir, run_dir, "--max_steps", "10", "--resume"))
        assert refused.value.code == 2
        error = capsys.readouterr().err
        assert f"in use by pid {first.pid}" in error and "Traceback" not in error
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rows = [orjson.loads(line) for line in (run_dir / METRICS_FILE).read_bytes().splitlines() if line.strip()]
    steps = [row["step"] for row in rows if "train_loss" in row]
    assert steps == sorted(steps)  # only the first trainer wrote


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "cuda"], "CUDA is not available") if not torch.cuda.is_available() else (["--device", "cuda:99"], "CUDA device"),
        (["--seed", "99999999999999999999"], "seed must fit in a 64-bit integer"),
        (["--seed", "-1"], "seed must lie in"),
        (["--set=model.context_length=100000", "--set=model.kernels=reference"], "training needs about"),
        (["--max_steps", "-3"], "max_steps must be positive"),
        (["--schedule.lr", "nan"], "schedule.lr"),
    ],
)
def test_a_bad_argument_is_one_line_before_any_work(token_dir, tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        main(arguments(token_dir, run_dir, *flags))
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert not run_dir.exists()
