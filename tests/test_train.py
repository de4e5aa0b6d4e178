"""The training pipeline end to end, on tiny models and synthetic tokens."""

import math
import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import orjson
import pytest
import torch

from core.accounting import training_step_flops
from core.errors import UsageError
from core.model import forward
from core.optim import adamw, chain, clip_by_global_norm
from core.train_state import TrainState, init_train_state
from core.train_step import make_train_step
from core.tree import tree_leaves_by_path
from params.init import init_params
from params.tree import flatten
from pipelines.training.data import download
from pipelines.training.run import run as run_module
from pipelines.training.run import start as start_module
from pipelines.training.storage.checkpoint import load_train_state, read_train_state
from pipelines.training.cli import main
from pipelines.training.config.config import TrainConfig, field_types, parse_overrides, resolve_config, with_overrides
from pipelines.training.run.loop import train
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.config.optimizer import make_optimizer
from pipelines.training.config.presets import preset_for_device
from pipelines.training.storage.run_dir import checkpoint_path
from tests.commands import ROOT
from tests.runs import TINY, tiny_config, trainer_argv, trainer_command, wait_for_progress

def saved_state(run_dir: Path, config: TrainConfig) -> TrainState:
    return load_train_state(read_train_state(checkpoint_path(run_dir)), config.model, make_optimizer(config))


def test_a_tiny_run_learns_and_fills_its_run_directory(token_dir, tmp_path):
    config = tiny_config(token_dir, tmp_path / "run", {"max_steps": 40, "schedule.lr": 1e-2, "schedule.final_lr": 1e-3})
    run_dir = train(config)
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "completed" and summary["step"] == 40 and summary["tokens"] == 40 * 8 * 16
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in val_rows] == [10, 20, 30, 40]
    assert set(train_rows[0]) == {"step", "tokens", "wall", "train_loss", "lr", "grad_norm", "tokens_per_s", "flops_per_s", "mfu"}
    flops_per_step = training_step_flops(config.model, config.data.batch_size)
    for row in train_rows:
        assert row["flops_per_s"] == pytest.approx(row["tokens_per_s"] / (8 * 16) * flops_per_step)
        assert 0 < row["mfu"] < 1
    assert 0 < summary["mfu"] < 1 and summary["flops_per_s"] == pytest.approx(summary["tokens_per_s"] / (8 * 16) * flops_per_step)
    assert math.log(32) - 1.0 < train_rows[0]["train_loss"] < math.log(32) + 0.5  # steps 1-5 average, near chance
    assert val_rows[-1]["val_loss"] < 0.5 * val_rows[0]["val_loss"]
    assert TrainConfig.from_dict(orjson.loads((run_dir / "config.json").read_bytes())) == config
    assert checkpoint_path(run_dir, "final.pt").exists() and checkpoint_path(run_dir).exists()


def test_stop_and_resume_gives_bit_identical_parameters(token_dir, tmp_path):
    straight_config = tiny_config(token_dir, tmp_path / "straight", {"max_steps": 14, "schedule.decay_steps": 14})
    straight = saved_state(train(straight_config), straight_config)
    partial_config = tiny_config(token_dir, tmp_path / "resumed", {"max_steps": 6, "schedule.decay_steps": 14})
    train(partial_config)
    resumed_config = with_overrides(partial_config, {"max_steps": 14})
    resumed = saved_state(train(resumed_config, resume=True), resumed_config)
    assert straight.step == resumed.step == 14
    a, b = flatten(straight.params), flatten(resumed.params)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    opt_a, opt_b = (tree_leaves_by_path(s.opt_state) for s in (straight, resumed))
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(x, opt_b[k]) if isinstance(x, torch.Tensor) else x == opt_b[k] for k, x in opt_a.items())


def test_resume_refuses_a_different_model_and_a_fresh_run_refuses_an_occupied_directory(token_dir, tmp_path):
    config = tiny_config(token_dir, tmp_path / "run", {"max_steps": 5})
    train(config)
    with pytest.raises(UsageError, match="--resume"):
        train(config)
    with pytest.raises(ValueError, match=r"differs from the checkpoint .* \['d_model'\]"):
        train(with_overrides(config, {"model.d_model": 64}), resume=True)
    with pytest.raises(UsageError, match="no checkpoint"):
        train(with_overrides(config, {"run_dir": str(tmp_path / "empty")}), resume=True)


def test_a_run_resumes_on_the_other_kernels(token_dir, tmp_path):
    config = tiny_config(token_dir, tmp_path / "run", {"max_steps": 5, "model.kernels": "reference"})
    train(config)
    resumed = with_overrides(config, {"max_steps": 7, "model.kernels": "torch"})
    assert saved_state(train(resumed, resume=True), resumed).step == 7


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(token_dir, tmp_path, monkeypatch):
    original = start_module.make_train_step

    def failing_from_step_8(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def step(state, batch):
            if state.step + 1 >= 8:  # the 8th update sees a non-finite loss, as after a blow-up
                return state, {"loss": torch.tensor(float("nan")), "grad_norm": torch.tensor(1.0), "applied": False}
            return step_fn(state, batch)

        return step

    monkeypatch.setattr(start_module, "make_train_step", failing_from_step_8)
    config = tiny_config(token_dir, tmp_path / "run", {"max_steps": 30, "checkpoint_every": 5})
    run_dir = train(config)
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "diverged"
    assert "non-finite loss at step 8" in summary["message"] and "(step 5)" in summary["message"]
    state = saved_state(run_dir, config)
    assert state.step == 5  # the last checkpoint, written before the divergence
    assert all(torch.isfinite(t).all() for t in flatten(state.params).values())
    assert not checkpoint_path(run_dir, "final.pt").exists()
    assert read_metrics(run_dir)[-1] == {"step": 8, "event": "diverged", "wall": read_metrics(run_dir)[-1]["wall"]}


@pytest.mark.parametrize("log_every", [1, 5])
def test_a_huge_learning_rate_diverges_and_never_writes_weights_that_overflow(token_dir, tmp_path, log_every):
    config = tiny_config(token_dir, tmp_path / "run", {"max_steps": 12, "schedule.lr": 1e9, "schedule.warmup_steps": 0,
                                                       "log_every": log_every, "checkpoint_every": 1})
    run_dir = train(config)
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "diverged", summary
    assert not checkpoint_path(run_dir, "final.pt").exists()
    if checkpoint_path(run_dir).exists():  # whatever was written gives finite logits
        state = saved_state(run_dir, config)
        tokens = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(forward(state.params, tokens, config.model)).all()
        assert f"(step {state.step})" in summary["message"]
    else:
        assert "no checkpoint was written" in summary["message"]


def test_a_checkpoint_that_cannot_be_written_fails_the_run_in_one_line(token_dir, tmp_path, monkeypatch, capsys):
    original, calls = run_module.save_train_state, []

    def full_disk_on_the_second_save(path, state, meta):
        calls.append(state.step)
        if len(calls) == 2:
            raise OSError(28, f"could not write checkpoint {path}: No space left on device")
        original(path, state, meta)

    monkeypatch.setattr(run_module, "save_train_state", full_disk_on_the_second_save)
    run_dir = tmp_path / "run"
    settings = {k: v for k, v in TINY.items() if k != "checkpoint_every"}
    assert main(trainer_argv(token_dir, run_dir, settings, "--max_steps", "30", "--checkpoint_every", "5")) == 1
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "failed" and summary["step"] == 10
    assert "No space left on device" in summary["message"] and "(step 5)" in summary["message"]
    assert read_train_state(checkpoint_path(run_dir))["step"] == 5
    assert "Traceback" not in capsys.readouterr().err


def test_sigint_writes_a_checkpoint_and_the_run_resumes_from_it(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    settings = {k: v for k, v in TINY.items() if k not in ("log_every", "eval.every", "checkpoint_every")}
    command = trainer_command(token_dir, run_dir, settings, "--max_steps", "1000000", "--log_every", "1", "--eval.every", "1000",
                              "--checkpoint_every", "1000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_progress(process, run_dir, rows=3)  # a run that ended early fails on its exit code below
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()[-2000:]
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "interrupted"
    assert read_train_state(checkpoint_path(run_dir))["step"] == summary["step"] >= 3
    assert b"resume with" in stderr

    target = summary["step"] + 3  # resumed by the command's main() in this process: no second interpreter
    assert main(["--resume", "--run_dir", str(run_dir), "--max_steps", str(target)]) == 0
    final = orjson.loads((run_dir / "summary.json").read_bytes())
    assert final["status"] == "completed" and final["step"] == target


@pytest.mark.parametrize(
    "args, field",
    [
        (["--model.num_heads", "3"], "num_heads"),
        (["--schedule.lr", "fast"], "'schedule.lr'"),
        (["--schedule.lr", "-1"], "TrainConfig.schedule.lr"),
        (["--model.norm", "sideways"], "ModelConfig.norm"),
        (["--set", "nope=1"], "nope"),
        (["--set", "lr=1e-3"], "'lr=1e-3'"),
        (["--schedule.warmup_steps", "50", "--schedule.decay_steps", "10"], "schedule.decay_steps"),
        (["--preset", "gpu-huge"], "gpu-huge"),
        (["--schedule.lr", "1e-3", "--schedule.final_lr", "1e-2"], "TrainConfig.schedule.final_lr"),
        (["--data.batch_size", "0"], "TrainConfig.data.batch_size"),
    ],
)
def test_a_bad_config_fails_before_any_work_naming_the_field(tmp_path, capsys, args, field):
    with pytest.raises(SystemExit) as refused:
        main(["--preset", "cpu-small", "--run_dir", str(tmp_path / "run"), *args])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert field in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_presets_and_overrides_resolve_to_typed_settings(tmp_path):
    baseline = resolve_config("tinystories", "baseline")
    model = baseline.model
    assert (model.vocab_size, model.context_length, model.d_model, model.d_ff) == (10_000, 256, 512, 1344)
    assert (model.num_layers, model.num_heads, model.rope_theta) == (4, 16, 10_000.0)
    assert baseline.data.batch_size * baseline.max_steps * model.context_length == 327_680_000

    overrides = parse_overrides(["schedule.lr=3e-3", "model.d_model=256", "model.norm=post", "compile=true",
                                 ("model.tie_embeddings", "yes"), "schedule.decay_steps=none"])
    assert overrides == {"schedule.lr": 3e-3, "model.d_model": 256, "model.norm": "post", "compile": True,
                         "model.tie_embeddings": True, "schedule.decay_steps": None}
    config = resolve_config("tinystories", "cpu-small", overrides)
    assert config.model.d_model == 256 and config.model.norm == "post" and config.model.tie_embeddings
    assert config.resolved_decay_steps == config.max_steps
    assert config.resolved_final_lr == pytest.approx(3e-4)  # final_lr defaults to lr / 10
    assert config.data.train_mb == 16  # cpu-small fetches only a prefix of the training text

    saved = tmp_path / "config.json"
    saved.write_bytes(orjson.dumps(config.to_dict()))
    assert resolve_config("tinystories", "baseline", {"schedule.lr": 1e-4}, config_file=saved) == with_overrides(config, {"schedule.lr": 1e-4})


def test_every_setting_is_a_flag_of_the_same_dotted_name(tmp_path, capsys):
    names = set(field_types())
    assert {"schedule.lr", "optim.weight_decay", "data.batch_size", "eval.every", "sample.top_p", "model.d_model"} <= names
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert all(f"--{name}" in help_text for name in names - {"dataset"})


def test_without_a_preset_the_device_picks_one():
    assert preset_for_device("cuda") == ("baseline", None)
    preset, notice = preset_for_device("cpu")
    assert preset == "cpu-small" and "--preset baseline" in notice


def test_without_data_offline_the_error_says_which_files_go_where(tmp_path, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(download, "download", offline)
    config = resolve_config("tinystories", "cpu-small", {**TINY, "run_dir": str(tmp_path / "run"), "max_steps": 1})
    with pytest.raises(UsageError) as error:
        train(config)
    message = str(error.value)
    assert "TinyStoriesV2-GPT4-train.txt" in message and "TinyStoriesV2-GPT4-valid.txt" in message
    assert str(tmp_path / "cache" / "data" / "tinystories") in message and "--data.path" in message


def test_missing_data_or_foreign_token_ids_fail_before_the_run_directory_exists(token_dir, tmp_path):
    with pytest.raises(UsageError, match="not a directory"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "run", {"max_steps": 1}))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        train(tiny_config(token_dir, tmp_path / "run", {"max_steps": 1, "model.vocab_size": 16}))
    assert not (tmp_path / "run").exists()


def test_asking_for_wandb_without_it_installed_fails_before_any_work(token_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed, wherever the suite runs
    config = tiny_config(token_dir, tmp_path / "run", {"max_steps": 2, "wandb": True})
    with pytest.raises(ImportError, match="pip install wandb"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("grad_mode", ["autograd", "func"])
def test_the_step_under_bf16_autocast_keeps_float32_state(grad_mode):
    # The CUDA path autocasts to bf16; the CPU autocast exercises the same plumbing here.
    config = resolve_config("tinystories", "cpu-small", TINY).model
    optimizer = chain(clip_by_global_norm(1.0), adamw(1e-2))
    train_step = make_train_step(config, optimizer, grad_mode=grad_mode, autocast=("cpu", torch.bfloat16))
    state = init_train_state(init_params(config, torch.Generator().manual_seed(0)), optimizer, rng=0)
    tokens = torch.randint(0, config.vocab_size, (4, config.context_length + 1), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(5):
        state, metrics = train_step(state, (tokens[:, :-1], tokens[:, 1:]))
        losses.append(float(metrics["loss"]))
    assert state.step == 5
    assert all(t.dtype == torch.float32 for t in flatten(state.params).values())
    assert all(t.dtype == torch.float32 for t in tree_leaves_by_path(state.opt_state).values() if isinstance(t, torch.Tensor))
    assert losses[-1] < losses[0]
