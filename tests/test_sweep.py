"""The sweep on synthetic tokens: variants from --vary/--variant, a divergent variant recorded as
such (not a crash), the summary files, and resumption skipping finished runs."""

import os
import signal
import subprocess
import sys

import numpy as np
import orjson
import pytest

from pipelines.experiments import experiment_log
from pipelines.experiments.sweep import Variant, main, make_variants
from tests.commands import ROOT
from tests.runs import wait_for_progress

TINY = [
    "model.vocab_size=64", "model.context_length=16", "model.d_model=16", "model.num_layers=1", "model.num_heads=2",
    "data.batch_size=4", "max_steps=6", "schedule.warmup_steps=1", "eval.every=3", "eval.windows=4",
    "log_every=1", "checkpoint_every=3", "sample.count=0",
]


@pytest.fixture
def data_dir(tmp_path):
    """Random token ids in train.npy / valid.npy: what the trainer reads from a data directory."""
    rng = np.random.default_rng(0)
    directory = tmp_path / "data"
    directory.mkdir()
    np.save(directory / "train.npy", rng.integers(0, 64, 4000, dtype=np.uint16))
    np.save(directory / "valid.npy", rng.integers(0, 64, 1000, dtype=np.uint16))
    return directory


def test_grid_times_listed_variants():
    variants = make_variants(["schedule.lr=1e-3,1e-2", "data.batch_size=8"], ["base", "model.norm=post+model.ffn=silu"])
    assert [v.name for v in variants] == [
        "schedule.lr=1e-3,data.batch_size=8",
        "schedule.lr=1e-3,data.batch_size=8,model.norm=post,model.ffn=silu",
        "schedule.lr=1e-2,data.batch_size=8",
        "schedule.lr=1e-2,data.batch_size=8,model.norm=post,model.ffn=silu",
    ]
    assert variants[1].overrides == {"schedule.lr": 1e-3, "data.batch_size": 8, "model.norm": "post", "model.ffn": "silu"}
    assert make_variants([], []) == [Variant("base", {})]
    named = make_variants([], ["bs1:data.batch_size=1+max_steps=64"])
    assert named == [Variant("bs1", {"data.batch_size": 1, "max_steps": 64})]


def test_bad_specs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown|expected"):
        make_variants(["learning_rate=1e-3"], [])
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        make_variants(["schedule.lr"], [])
    with pytest.raises(ValueError, match="twice"):
        make_variants([], ["schedule.lr=1e-3", "schedule.lr=1e-3"])


@pytest.mark.parametrize("spec", [
    "../../x:schedule.lr=1e-3", "/tmp/abs:schedule.lr=1e-3", "..:schedule.lr=1e-3", ".:schedule.lr=1e-3",
    "a/b:schedule.lr=1e-3", "-x:schedule.lr=1e-3", "data.path=../elsewhere",
])
def test_variant_names_must_be_plain_folder_names(spec):
    with pytest.raises(ValueError, match=r"is not a plain folder name"):
        make_variants([], [spec])


def test_a_variant_named_outside_the_sweep_is_refused_before_any_run(tmp_path, data_dir, capsys):
    out = tmp_path / "a" / "b" / "sweep"
    with pytest.raises(SystemExit, match="^error: .*'../../x' is not a plain folder name"):
        main(["tinystories/cpu-small", "--variant", "../../x:schedule.lr=1e-3", "--set", f"data.path={data_dir}", "--out", str(out)])
    assert not (tmp_path / "a").exists()  # neither the sweep nor a/x, where the run would have gone


def test_sweep_records_divergence_and_resumes(tmp_path, data_dir, capsys):
    out = tmp_path / "sweep"
    # lr 1e6 with clipping off drives the weights to inf within a few steps: a divergent run.
    args = [
        "tinystories/cpu-small", "--vary", "schedule.lr=1e-3,1e6", "--out", str(out), "--threads", "1",
        "--set", f"data.path={data_dir}", "--set", "optim.max_grad_norm=1e30", "--set", "schedule.final_lr=0",
        *[item for pair in TINY for item in ("--set", pair)],
    ]
    main(args)
    rows = {row["name"]: row for row in orjson.loads((out / "summary.json").read_bytes())}
    assert rows["schedule.lr=1e-3"]["status"] == "completed"
    assert rows["schedule.lr=1e-3"]["steps"] == 6 and rows["schedule.lr=1e-3"]["best_val_loss"] > 0
    assert rows["schedule.lr=1e6"]["status"] == "diverged"
    table = (out / "summary.md").read_text()
    assert "| schedule.lr=1e6 | diverged | 1e+06 | 4 |" in table
    assert (out / "curves.png").stat().st_size > 0

    capsys.readouterr()
    main(args)  # every run finished: nothing is trained again
    assert capsys.readouterr().err.count("skipped") == 2

    # The experiment log: the sweep's table and figure between the markers, the narrative kept.
    doc = tmp_path / "docs" / "experiments.md"
    doc.parent.mkdir()
    doc.write_text(f"# Notes\n\n{experiment_log.START}\nold\n{experiment_log.END}\n\nMore narrative.\n")
    experiment_log.main([str(out), "--out", str(doc), "--figures", str(tmp_path / "docs" / "figures")])
    text = doc.read_text()
    assert text.startswith("# Notes") and text.endswith("More narrative.\n") and "old" not in text
    assert "| schedule.lr=1e6 | diverged |" in text and "](figures/sweep.png)" in text
    assert (tmp_path / "docs" / "figures" / "sweep.png").stat().st_size > 0


@pytest.mark.slow
def test_sigterm_to_the_sweep_stops_its_trainers_with_a_checkpoint(tmp_path, data_dir):
    out = tmp_path / "sweep"
    settings = [s for s in TINY if not s.startswith(("max_steps", "log_every", "checkpoint_every"))]
    command = [
        sys.executable, "-m", "pipelines.experiments.sweep", "tinystories/cpu-small", "--vary", "seed=0,1", "--out", str(out),
        "--threads", "1", "--set", f"data.path={data_dir}", "--set", "max_steps=1000000", "--set", "log_every=1",
        "--set", "checkpoint_every=1000000", *[item for pair in settings for item in ("--set", pair)],
    ]
    sweep = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    wait_for_progress(sweep, out / "seed=0", rows=3)  # a sweep that ended early fails on its summary below
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=120)
    first = orjson.loads((out / "seed=0" / "summary.json").read_bytes())
    assert first["status"] == "interrupted"
    assert (out / "seed=0" / "checkpoints" / "last.pt").exists()
    assert b"seed=1: not started (the sweep was stopped)" in stderr
