"""The training pipeline end to end, on tiny models and synthetic tokens."""

import argparse
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from core.optim import AdamWHParams, adamw_init
from core.train_step import StepConfig, make_train_step
from params.init import init_params
from params.tree import flatten
from pipelines.training import download, loop as train_module
from pipelines.training.checkpoint import load_training_state
from pipelines.training.metrics import read_metrics
from pipelines.training.run_dir import checkpoint_path
from pipelines.training.loop import main, train
from pipelines.training.config import TrainConfig, add_config_arguments, overrides_from_args, resolve_config, with_overrides

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(
    vocab_size=32, context_length=16, d_model=32, num_layers=1, num_heads=2,
    batch_size=8, warmup_steps=2, log_every=5, eval_every=10, eval_windows=8, checkpoint_every=10, samples=0,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    """train.npy / valid.npy: a repeating 24-token pattern, so the next token is learnable."""
    pattern = np.random.default_rng(0).integers(0, 32, 24)
    directory = tmp_path / "data"
    directory.mkdir()
    np.save(directory / "train.npy", np.tile(pattern, 200).astype(np.uint16))
    np.save(directory / "valid.npy", np.tile(pattern, 20).astype(np.uint16))
    return directory


def tiny_config(token_dir: Path, run_dir: Path, **overrides) -> TrainConfig:
    return resolve_config("tinystories", "cpu-small", {**TINY, "data": str(token_dir), "run_dir": str(run_dir), **overrides})


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return flatten(load_training_state(checkpoint_path(run_dir))["params"])


def test_a_tiny_run_learns_and_fills_its_run_directory(token_dir, tmp_path):
    config = tiny_config(token_dir, tmp_path / "run", max_steps=40, lr=1e-2, min_lr=1e-3)
    run_dir = train(config)
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "completed" and summary["step"] == 40 and summary["tokens"] == 40 * 8 * 16
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in val_rows] == [10, 20, 30, 40]
    assert set(train_rows[0]) == {"step", "tokens", "wall", "train_loss", "lr", "grad_norm", "tokens_per_s"}
    assert train_rows[0]["train_loss"] > math.log(32) - 0.5
    assert val_rows[-1]["val_loss"] < 0.5 * val_rows[0]["val_loss"]
    assert TrainConfig.from_dict(orjson.loads((run_dir / "config.json").read_bytes())) == config
    assert checkpoint_path(run_dir, "final.pt").exists() and checkpoint_path(run_dir).exists()


def test_stop_and_resume_gives_bit_identical_parameters(token_dir, tmp_path):
    straight = train(tiny_config(token_dir, tmp_path / "straight", max_steps=14, cosine_steps=14))
    partial_config = tiny_config(token_dir, tmp_path / "resumed", max_steps=6, cosine_steps=14)
    train(partial_config)
    resumed = train(with_overrides(partial_config, max_steps=14), resume=True)
    a, b = final_params(straight), final_params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    opt_a = load_training_state(checkpoint_path(straight))["opt_state"]
    opt_b = load_training_state(checkpoint_path(resumed))["opt_state"]
    assert opt_a["step"] == opt_b["step"] == 14
    assert all(torch.equal(x, y) for x, y in zip(flatten(opt_a["v"]).values(), flatten(opt_b["v"]).values()))


def test_resume_refuses_a_different_model_and_a_fresh_run_refuses_an_occupied_directory(token_dir, tmp_path):
    config = tiny_config(token_dir, tmp_path / "run", max_steps=5)
    train(config)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config)
    with pytest.raises(ValueError, match=r"differs from the checkpoint .* \['d_model'\]"):
        train(with_overrides(config, d_model=64), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(with_overrides(config, run_dir=str(tmp_path / "empty")), resume=True)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(token_dir, tmp_path, monkeypatch):
    original = train_module.make_train_step

    def failing_at_step_8(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def step(params, opt_state, batch, index):
            params, opt_state, metrics = step_fn(params, opt_state, batch, index)
            if index + 1 >= 8:  # from the 8th update on, as after a real blow-up
                metrics = {**metrics, "loss": torch.tensor(float("nan"))}
            return params, opt_state, metrics

        return step

    monkeypatch.setattr(train_module, "make_train_step", failing_at_step_8)
    run_dir = train(tiny_config(token_dir, tmp_path / "run", max_steps=30))
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "diverged"
    assert "non-finite loss at step 8" in summary["message"]
    state = load_training_state(checkpoint_path(run_dir))
    assert state["step"] == 5  # the last boundary at which every loss was finite
    assert all(torch.isfinite(t).all() for t in flatten(state["params"]).values())
    assert not checkpoint_path(run_dir, "final.pt").exists()
    assert read_metrics(run_dir)[-1] == {"step": 8, "event": "diverged", "wall": read_metrics(run_dir)[-1]["wall"]}


def test_sigint_writes_a_checkpoint_and_the_run_resumes_from_it(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "pipelines.training.loop", "tinystories", "--preset", "cpu-small", "--data", str(token_dir),
        "--run-dir", str(run_dir), "--max-steps", "1000000", "--log-every", "1", "--eval-every", "1000",
        "--checkpoint-every", "1000", *[f"--set={k}={v}" for k, v in TINY.items() if k not in ("log_every", "eval_every", "checkpoint_every")],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 3):
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run logged nothing within 120 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()[-2000:]
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "interrupted"
    assert load_training_state(checkpoint_path(run_dir))["step"] == summary["step"] >= 3
    assert b"resume with" in stderr

    target = summary["step"] + 3
    resumed = subprocess.run(
        [sys.executable, "-m", "pipelines.training.loop", "--resume", "--run-dir", str(run_dir), "--max-steps", str(target)],
        cwd=ROOT, env=env, capture_output=True, timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    final = orjson.loads((run_dir / "summary.json").read_bytes())
    assert final["status"] == "completed" and final["step"] == target


@pytest.mark.parametrize(
    "args, field",
    [
        (["--num-heads", "3"], "num_heads"),
        (["--lr", "fast"], "'lr'"),
        (["--lr", "-1"], "TrainConfig.lr"),
        (["--norm", "sideways"], "ModelConfig.norm"),
        (["--set", "nope=1"], "nope"),
        (["--warmup-steps", "50", "--cosine-steps", "10"], "cosine_steps"),
        (["--preset", "gpu-huge"], "gpu-huge"),
        (["--lr", "1e-3", "--min-lr", "1e-2"], "TrainConfig.min_lr"),
    ],
)
def test_a_bad_config_fails_before_any_work_naming_the_field(tmp_path, capsys, args, field):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "cpu-small", "--run-dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_presets_and_overrides_resolve_to_typed_fields(tmp_path):
    baseline = resolve_config("tinystories", "baseline")
    model = baseline.model
    assert (model.vocab_size, model.context_length, model.d_model, model.d_ff) == (10_000, 256, 512, 1344)
    assert (model.num_layers, model.num_heads, model.rope_theta) == (4, 16, 10_000.0)
    assert baseline.batch_size * baseline.max_steps * model.context_length == 327_680_000

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--lr", "3e-3", "--d-model", "256", "--norm", "post", "--compile",
                              "--set", "tie_embeddings=true", "--cosine-steps", "none"])
    overrides = overrides_from_args(args)
    assert overrides == {"lr": 3e-3, "d_model": 256, "norm": "post", "compile": True, "tie_embeddings": True, "cosine_steps": None}
    config = resolve_config("tinystories", "cpu-small", overrides)
    assert config.model.d_model == 256 and config.model.norm == "post" and config.model.tie_embeddings
    assert config.decay_steps == config.max_steps
    assert config.final_lr == pytest.approx(3e-4)  # min_lr defaults to lr / 10

    saved = tmp_path / "config.json"
    saved.write_bytes(orjson.dumps(config.to_dict()))
    assert resolve_config("tinystories", "baseline", {"lr": 1e-4}, config_file=saved) == with_overrides(config, lr=1e-4)


def test_without_data_offline_the_error_says_which_files_go_where(tmp_path, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))

    def offline(url, target, timeout=30.0):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(download, "download", offline)
    config = resolve_config("tinystories", "cpu-small", {**TINY, "run_dir": str(tmp_path / "run"), "max_steps": 1})
    with pytest.raises(FileNotFoundError) as error:
        train(config)
    message = str(error.value)
    assert "TinyStoriesV2-GPT4-train.txt" in message and "TinyStoriesV2-GPT4-valid.txt" in message
    assert str(tmp_path / "cache" / "data" / "tinystories") in message and "--data" in message


def test_asking_for_wandb_without_it_installed_fails_before_any_work(token_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed, wherever the suite runs
    config = tiny_config(token_dir, tmp_path / "run", max_steps=2, wandb=True)
    with pytest.raises(ImportError, match="pip install wandb"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("grad_mode", ["autograd", "func"])
def test_the_step_under_bf16_autocast_keeps_float32_state(grad_mode):
    # The CUDA path autocasts to bf16; the CPU autocast exercises the same plumbing here.
    config = resolve_config("tinystories", "cpu-small", TINY).model
    step_config = StepConfig(config, AdamWHParams(), max_grad_norm=1.0, grad_mode=grad_mode, autocast=("cpu", torch.bfloat16))
    train_step = make_train_step(step_config, lambda step: 1e-2)
    params = init_params(config, torch.Generator().manual_seed(0))
    opt_state = adamw_init(params)
    tokens = torch.randint(0, config.vocab_size, (4, config.context_length + 1), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(5):
        params, opt_state, metrics = train_step(params, opt_state, (tokens[:, :-1], tokens[:, 1:]), step)
        losses.append(float(metrics["loss"]))
    assert all(t.dtype == torch.float32 for t in flatten(params).values())
    assert all(t.dtype == torch.float32 for t in flatten(opt_state["v"]).values())
    assert losses[-1] < losses[0]
