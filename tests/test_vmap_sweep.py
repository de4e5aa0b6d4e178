"""Vectorised sweeps (`just sweep ... --vmap`): K variants trained as one stacked model equal K
runs trained alone, and leave the same run directories.

The stacked optimizer against K sequential ones; the stacked schedule against cosine_schedule;
then whole sweeps on a tiny model and synthetic tokens: vmapped against pipelines.training.run.loop.train
with the same seeds and hyperparameters (one variant diverging), interrupted by SIGINT and
resumed, and the fallback to sequential runs for variants that change shapes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch

from core.config import ModelConfig
from core.optim import adamw, apply_updates, chain, clip_by_global_norm, decay_matrices
from core.schedule import stack_schedules, warmup_cosine, warmup_stable_decay
from core.stack import stack_trees, unstack_tree, variant_values
from core.tree import tree_leaves, tree_leaves_by_path, tree_map
from params.init import init_params
from pipelines.experiments import sweep as sweep_module
from pipelines.experiments.sweep import Variant, main, make_variants, resolve_variant
from pipelines.generate import load_run
from pipelines.training.storage.checkpoint import load_train_state, read_train_state
from pipelines.training.run.loop import train
from pipelines.training.storage.metrics import read_metrics
from pipelines.training.config.optimizer import make_optimizer, why_not_stackable
from pipelines.training.storage.run_dir import FINAL, checkpoint_path
from tests.commands import ROOT
from tests.runs import wait_for_progress


VOCAB = 264  # above the 257 ids of the byte tokenizer the data comes with
TINY = {
    "model.vocab_size": VOCAB, "model.context_length": 16, "model.d_model": 16, "model.num_layers": 1, "model.num_heads": 2,
    "data.batch_size": 4, "schedule.warmup_steps": 3, "schedule.final_lr": 1e-4, "max_steps": 24, "log_every": 4,
    "eval.every": 8, "eval.windows": 8, "checkpoint_every": 8, "sample.count": 1, "sample.tokens": 4,
}
# Each variant changes what the stacked optimizer takes per variant; "boom" (lr 1e6, no clipping)
# sends its weights to infinity within a few steps.
VARIANTS = [
    "a:schedule.lr=3e-3",
    "b:schedule.lr=1e-2+seed=1+optim.beta1=0.8+optim.weight_decay=0+optim.max_grad_norm=0.5",
    "c:schedule.lr=5e-3+seed=2+optim.beta2=0.99+optim.eps=1e-6+schedule.warmup_steps=0+schedule.decay_steps=12",
    "d:schedule.lr=2e-3+schedule.kind=wsd+schedule.decay_fraction=0.5",
    "boom:schedule.lr=1e6+optim.max_grad_norm=1e30",
]


def sweep_args(out: Path, byte_data_dir: Path, variants: list[str], settings: dict) -> list[str]:
    args = ["tinystories/cpu-small", "--out", str(out), "--set", f"data.path={byte_data_dir}"]
    args += [item for name, value in settings.items() for item in ("--set", f"{name}={value}")]
    return args + [item for spec in variants for item in ("--variant", spec)]


# The stacked optimizer and schedule


def test_stacked_optimizer_equals_each_sequential_optimizer():
    config = ModelConfig(vocab_size=64, context_length=16, d_model=16, num_layers=1, num_heads=2)
    lr, b1, b2, eps = [1e-3, 3e-2, 1.0], [0.9, 0.8, 0.5], [0.99, 0.95, 0.9], [1e-8, 1e-6, 1e-3]
    decay, clip, warmup, steps = [0.1, 0.0, 0.5], [1.0, 0.01, 1e30], [2, 0, 5], [10, 10, 5]
    sequential = [
        chain(clip_by_global_norm(clip[k]), adamw(warmup_cosine(lr[k], lr[k] / 10, warmup[k], steps[k]), b1[k], b2[k], eps[k], decay[k], decay_matrices))
        for k in range(3)
    ]
    values = variant_values
    schedule = stack_schedules([warmup_cosine(lr[k], lr[k] / 10, warmup[k], steps[k]) for k in range(3)])
    stacked = chain(clip_by_global_norm(values(clip)), adamw(schedule, values(b1), values(b2), values(eps), values(decay), decay_matrices))
    params = [init_params(config, torch.Generator().manual_seed(k)) for k in range(3)]
    states = [opt.init(p) for opt, p in zip(sequential, params)]
    group_params, generator = stack_trees(params), torch.Generator().manual_seed(5)
    group_state = stacked.init(group_params)
    for step in range(12):
        grads = [tree_map(lambda leaf: torch.randn(leaf.shape, generator=generator), p) for p in params]
        donate = step % 2 == 0  # both paths, in place and not
        before = tree_map(torch.clone, group_params)
        updates, group_state = stacked.update(stack_trees(grads), group_state, group_params, donate=donate)
        if not donate:
            assert all(torch.equal(x, y) for x, y in zip(tree_leaves(group_params), tree_leaves(before)))
        group_params = apply_updates(group_params, updates, donate=donate)
        for k in range(3):
            updates, states[k] = sequential[k].update(grads[k], states[k], params[k])
            params[k] = apply_updates(params[k], updates)
    for k in range(3):
        for ours, theirs in zip(tree_leaves(unstack_tree(group_params, k)), tree_leaves(params[k])):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        ours_state, theirs_state = tree_leaves_by_path(unstack_tree(group_state, k)), tree_leaves_by_path(states[k])
        assert ours_state.keys() == theirs_state.keys()  # same structure: a variant's checkpoint is an ordinary one
        for name, leaf in theirs_state.items():
            if isinstance(leaf, torch.Tensor):
                torch.testing.assert_close(ours_state[name], leaf, rtol=1e-6, atol=1e-9)
            else:
                assert ours_state[name] == leaf, name  # the step counts


def test_stacked_schedules_are_each_variants_own():
    schedules = [warmup_cosine(1e-3, 1e-4, 10, 100), warmup_cosine(3e-2, 0.0, 0, 50), warmup_stable_decay(1.0, 0.1, 5, 40, 60)]
    stacked = stack_schedules(schedules)
    for step in range(0, 130, 3):
        assert stacked(step).tolist() == [schedule(step) for schedule in schedules]  # to the bit


def test_stack_trees_keeps_shared_counts_and_refuses_different_ones():
    trees = [{"w": torch.full((2,), float(k)), "count": 3} for k in range(4)]
    stacked = stack_trees(trees)
    assert stacked["w"].shape == (4, 2) and stacked["count"] == 3
    assert torch.equal(unstack_tree(stacked, 2)["w"], torch.full((2,), 2.0))
    assert unstack_tree(stacked, 2)["w"].untyped_storage().nbytes() == 2 * 4  # its own storage, not the stack's
    with pytest.raises(ValueError, match="differs between trees"):
        stack_trees([{"count": 1}, {"count": 2}])


# Whole sweeps


def test_vmapped_sweep_equals_sequential_runs_with_one_diverging(tmp_path, byte_data_dir):
    out = tmp_path / "vmap"
    main([*sweep_args(out, byte_data_dir, VARIANTS, TINY), "--vmap", "--threads", "1"])
    rows = {row["name"]: row for row in orjson.loads((out / "summary.json").read_bytes())}
    assert {name: row["status"] for name, row in rows.items()} == {"a": "completed", "b": "completed", "c": "completed", "d": "completed", "boom": "diverged"}

    fixed = {k: v for k, v in TINY.items()} | {"data.path": str(byte_data_dir)}
    for variant in make_variants([], VARIANTS):
        alone = train(resolve_variant("tinystories/cpu-small", fixed, variant, tmp_path / "alone" / variant.name))
        assert_same_run(out / variant.name, alone)
    # Checkpoints are ordinary ones: the sequential optimizer loads them, and so does `just generate`.
    config = resolve_variant("tinystories/cpu-small", fixed, Variant("a", {"schedule.lr": 3e-3}), out / "a")
    state = load_train_state(read_train_state(checkpoint_path(out / "a", FINAL)), config.model, make_optimizer(config))
    params, _, _ = load_run(out / "a", None, torch.device("cpu"))
    assert state.step == 24 and all(torch.equal(x, y) for x, y in zip(tree_leaves(params), tree_leaves(state.params)))
    assert (out / "a" / "samples.txt").read_text().strip()


def assert_same_run(ours: Path, alone: Path) -> None:
    """The same summary, metrics rows and checkpoints, numbers equal to fp32 rounding."""
    summary, expected = (orjson.loads((run / "summary.json").read_bytes()) for run in (ours, alone))
    assert summary.keys() == expected.keys()
    for key in ("status", "step", "tokens", "parameters"):
        assert summary[key] == expected[key], (ours.name, key)
    assert summary["message"].replace(str(ours), "RUN") == expected["message"].replace(str(alone), "RUN")
    for key in ("train_loss", "val_loss"):
        assert summary[key] == (None if expected[key] is None else pytest.approx(expected[key], rel=1e-5)), (ours.name, key)
    rows, expected_rows = read_metrics(ours), read_metrics(alone)
    assert [(r["step"], sorted(r)) for r in rows] == [(r["step"], sorted(r)) for r in expected_rows]
    for row, theirs in zip(rows, expected_rows):
        for key in ("tokens", "lr", "train_loss", "grad_norm", "val_loss"):
            if key in theirs:
                assert row[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (ours.name, row["step"], key)
    names = sorted(path.name for path in (alone / "checkpoints").glob("*.pt"))
    assert sorted(path.name for path in (ours / "checkpoints").glob("*.pt")) == names
    for name in names:
        saved, theirs = read_train_state(ours / "checkpoints" / name), read_train_state(alone / "checkpoints" / name)
        assert saved["step"] == theirs["step"] and saved["rng"] == theirs["rng"]
        for key, leaf in theirs["params"].items():
            torch.testing.assert_close(saved["params"][key], leaf, rtol=1e-5, atol=1e-6)
        assert saved["opt_state"].keys() == theirs["opt_state"].keys()


@pytest.mark.slow
def test_sigint_stops_the_group_with_checkpoints_and_the_sweep_resumes_it(tmp_path, byte_data_dir):
    out = tmp_path / "sweep"
    # The schedule is pinned (decay_steps), so that the resumed call can end sooner than the first.
    settings = TINY | {"max_steps": 1_000_000, "log_every": 1, "checkpoint_every": 1_000_000, "schedule.decay_steps": 40, "sample.count": 0}
    variants = VARIANTS[:2]
    command = [sys.executable, "-m", "pipelines.experiments.sweep", *sweep_args(out, byte_data_dir, variants, settings), "--vmap", "--threads", "1"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    wait_for_progress(process, out / "b", rows=3)  # a sweep that ended early fails on its summaries below
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    summaries = [orjson.loads((out / name / "summary.json").read_bytes()) for name in ("a", "b")]
    assert [s["status"] for s in summaries] == ["interrupted", "interrupted"]
    stopped = summaries[0]["step"]
    assert summaries[1]["step"] == stopped and read_train_state(checkpoint_path(out / "a"))["step"] == stopped

    # The next call resumes both as one group; they end as the same group trained without a stop.
    resumed = settings | {"max_steps": stopped + 4}
    main([*sweep_args(out, byte_data_dir, variants, resumed), "--vmap", "--threads", "1"])
    main([*sweep_args(tmp_path / "straight", byte_data_dir, variants, resumed), "--vmap", "--threads", "1"])
    for name in ("a", "b"):
        assert orjson.loads((out / name / "summary.json").read_bytes())["status"] == "completed"
        steps = [r["step"] for r in read_metrics(out / name) if "train_loss" in r]
        assert steps == list(range(1, stopped + 5))
        saved, straight = (read_train_state(checkpoint_path(root / name, FINAL)) for root in (out, tmp_path / "straight"))
        for key, leaf in straight["params"].items():
            torch.testing.assert_close(saved["params"][key], leaf, rtol=1e-5, atol=1e-6)


def test_variants_of_other_shapes_fall_back_to_one_by_one(tmp_path, byte_data_dir, monkeypatch, capsys):
    trained = []
    monkeypatch.setattr(sweep_module, "run_variant", lambda config, *rest: trained.append(config.model.d_model) or "completed")
    main([*sweep_args(tmp_path / "sweep", byte_data_dir, ["model.d_model=16", "model.d_model=32"], TINY | {"max_steps": 2}), "--vmap"])
    assert trained == [16, 32]
    notice = [line for line in capsys.readouterr().err.splitlines() if line.startswith("--vmap:")]
    assert notice == ["--vmap: the variants differ in model.d_model, which cannot be stacked (shapes or the shared loop); "
                      "training the variants one by one"]


def test_what_can_be_stacked():
    def config(**overrides):
        return resolve_variant("tinystories/cpu-small", {}, Variant("x", overrides), Path("run"))

    base = config()
    assert why_not_stackable([base, config(**{"schedule.lr": 1e-2, "seed": 3, "optim.beta2": 0.99, "optim.max_grad_norm": 0.1})]) is None
    assert "data.batch_size" in why_not_stackable([base, config(**{"data.batch_size": 8})])
    assert "max_steps" in why_not_stackable([base, config(max_steps=10)])
    assert "AdamW only" in why_not_stackable([config(**{"optim.name": "muon"})] * 2)
    assert "no gradient accumulation" in why_not_stackable([config(grad_accum=2)] * 2)
    assert "--gns" in why_not_stackable([config(gns=True)] * 2)
