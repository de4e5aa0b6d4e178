"""`--nproc N` through the real command line: it starts on a fresh run directory with text data
(the tokenizer trained and the text encoded once, before any worker exists), only the main process
speaks, a setting refused for data-parallel runs is one line before anything starts, a launcher
killed with SIGKILL takes its workers with it and frees the run directory, and the one stop signal
the workers get is never lost."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipelines.training.cli import main
from pipelines.training.run import loop as loop_module
from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.storage.run_dir import SUMMARY_FILE, TOKENIZER_DIR, checkpoint_path
from pipelines.training.storage.run_lock import lock_run_dir
from tests.commands import ROOT
from tests.inputs import EOT
from tests.runs import TRAINER, children, process_stat, tiny_config, trainer_argv, wait_for_progress

SETTINGS = {
    "model.vocab_size": 512, "model.context_length": 16, "model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2,
    "data.batch_size": 4, "schedule.warmup_steps": 2, "log_every": 1, "eval.every": 4, "eval.windows": 4,
    "checkpoint_every": 4, "sample.count": 0,
}
WORDS = "the a cat dog sun tree ran saw big small happy sad went home and then it was day night".split()


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    """train.txt / valid.txt of made-up stories: too little text for 512 tokens, so the tokenizer
    stops short and the trainer prints a note about it (which one process only must print)."""
    rng = random.Random(0)
    directory = tmp_path / "text"
    directory.mkdir()
    for name, stories in (("train.txt", 300), ("valid.txt", 60)):
        text = EOT.join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(stories))
        (directory / name).write_text(text)
    return directory


def arguments(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """The trainer's arguments for a `--nproc 2` run on SETTINGS."""
    return trainer_argv(data, run_dir, SETTINGS, "--nproc", "2", *extra)


def environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "LMKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def start_fresh(data: Path, run_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    """A 4-step `--nproc 2` run on a run directory and a cache that do not exist yet."""
    return subprocess.run([*TRAINER, *arguments(data, run_dir, "--max_steps", "4")], cwd=ROOT, env=environment(cache),
                          capture_output=True, text=True, timeout=300)


def check_started_and_completed(result: subprocess.CompletedProcess, run_dir: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert orjson.loads((run_dir / SUMMARY_FILE).read_bytes())["status"] == "completed"
    assert {p.name for p in (run_dir / TOKENIZER_DIR).iterdir()} >= {"vocab.json", "merges.txt"}
    assert read_train_state(checkpoint_path(run_dir, "final.pt"))["step"] == 4


def test_nproc_2_starts_on_a_fresh_run_directory_with_text_data_only_the_main_process_speaks_and_it_resumes(text_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = start_fresh(text_dir, run_dir, tmp_path / "cache")
    check_started_and_completed(result, run_dir)
    assert result.stderr.count("training a 512-token BPE tokenizer") + result.stdout.count("training a 512-token BPE tokenizer") == 1
    assert result.stderr.count("note: the tokenizer has") == 1  # each process reads the tokenizer; one speaks
    assert result.stderr.count(f"training {run_dir} on cpu x 2 processes") == 1
    assert "Traceback" not in result.stderr and "torch.distributed" not in result.stderr

    resumed = subprocess.run([*TRAINER, "--nproc", "2", "--resume", "--run_dir", str(run_dir), "--max_steps", "8"], cwd=ROOT,
                             env=environment(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert orjson.loads((run_dir / SUMMARY_FILE).read_bytes())["status"] == "completed"
    assert read_train_state(checkpoint_path(run_dir, "final.pt"))["step"] == 8
    assert [row["step"] for row in read_metrics(run_dir) if "train_loss" in row] == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.slow
def test_nproc_2_starts_every_time_on_fresh_run_directories_under_load(text_dir, tmp_path):
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy core beside the two processes
    try:
        for attempt in range(8):
            run_dir = tmp_path / f"run{attempt}"
            check_started_and_completed(start_fresh(text_dir, run_dir, tmp_path / f"cache{attempt}"), run_dir)
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard_optimizer", "true", "--optim.name", "muon"], "--shard_optimizer shards AdamW's moments"),
        (["--device", "cuda"], "CUDA"),
        (["--set=model.context_length=100000", "--set=model.kernels=reference"], "training needs about"),
    ],
)
def test_a_refusal_before_launch_is_one_line_and_starts_nothing(text_dir, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    assert message in refusal(arguments(text_dir, run_dir, *flags), capsys)
    assert not run_dir.exists()


def test_a_busy_run_directory_is_refused_before_launch(text_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with lock_run_dir(run_dir):  # this test holds it, as a live trainer would
        error = refusal(arguments(text_dir, run_dir), capsys)
    assert f"in use by pid {os.getpid()}" in error
    assert [p.name for p in run_dir.iterdir()] == [".lock"]


def refusal(argv: list[str], capsys) -> str:
    """The one line `argv` (the trainer's arguments) is refused with, in this process: a refusal
    before launch starts no process, so nothing here is replaced or forked."""
    try:
        code = main(argv)
    except SystemExit as refused:  # the command wrapper's way of ending with a refusal
        code = refused.code
    assert code != 0
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "starting" not in error, error
    return error


def test_killing_the_launcher_stops_its_workers_and_frees_the_run_directory(text_dir, tmp_path):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen([*TRAINER, *arguments(text_dir, run_dir, "--max_steps", "1000000", "--set=checkpoint_every=1000000")],
                                cwd=ROOT, env=environment(tmp_path / "cache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(launcher, run_dir)
        assert launcher.poll() is None, "the run ended before the test could act"
        workers = children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 90  # untouched, they would train a million steps
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "the workers outlived their launcher"
            time.sleep(0.1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.stderr.close()
    lock_run_dir(run_dir).release()  # nobody holds the run directory
    summary = orjson.loads((run_dir / SUMMARY_FILE).read_bytes())
    assert summary["status"] == "interrupted"  # they stopped as for a SIGTERM: at one step, with a checkpoint
    assert read_train_state(checkpoint_path(run_dir))["step"] == summary["step"] > 0


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        return process_stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_stop_signal_that_lands_during_the_processes_agreement_is_not_lost(token_dir, tmp_path, monkeypatch):
    """The launcher's SIGTERM (or torchrun's SIGINT) is sent once; with several processes it most
    often lands while the loop waits in the collective that agrees on stopping."""
    agree = loop_module.any_process

    def signalled_during_the_collective(flag: bool, processes, device) -> bool:
        answer = agree(flag, processes, device)
        if not flag and not hasattr(signalled_during_the_collective, "sent"):
            signalled_during_the_collective.sent = True
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, before the answer is returned
        return answer

    monkeypatch.setattr(loop_module, "any_process", signalled_during_the_collective)
    run_dir = loop_module.train(tiny_config(token_dir, tmp_path / "run", {"max_steps": 50}))
    summary = orjson.loads((run_dir / SUMMARY_FILE).read_bytes())
    assert summary["status"] == "interrupted" and summary["step"] == 2, summary
