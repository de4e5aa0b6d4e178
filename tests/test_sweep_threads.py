"""`just sweep` honours OMP_NUM_THREADS and --threads and says what it chose; every variant's
settings are checked before the sweep writes anything."""

import os

import pytest

from pipelines.experiments import sweep as sweep_module
from pipelines.experiments.sweep import main, threads_per_variant


def test_threads_come_from_the_flag_then_the_environment_then_the_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_variant(3, 1) == (3, "--threads")
    assert threads_per_variant(None, 2) == (1, "OMP_NUM_THREADS=1")
    monkeypatch.delenv("OMP_NUM_THREADS")
    cpus = os.cpu_count() or 1
    assert threads_per_variant(None, 1)[0] == cpus and threads_per_variant(None, cpus * 2)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        threads_per_variant(None, 1)


def test_the_sweep_says_what_it_chose_and_passes_it_on(monkeypatch, tmp_path, capsys):
    chosen = {}
    monkeypatch.setattr(sweep_module, "sweep", lambda *args, **kwargs: chosen.update(threads=args[5]) or [])
    monkeypatch.setattr(sweep_module, "markdown_table", lambda rows: "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(["tinystories/cpu-small", "--vary", "seed=0,1", "--out", str(tmp_path / "s")])
    assert chosen["threads"] == 1
    assert "sweep: 1 torch thread per variant (OMP_NUM_THREADS=1), 1 variant at a time" in capsys.readouterr().err


@pytest.mark.parametrize("vary", ["schedule.lr=1e-3,inf", "optim.eps=nan", "eval.every=0,100", f"max_steps={10**23}"])
def test_a_bad_value_in_any_variant_is_refused_before_anything_is_written(vary, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["tinystories/cpu-small", "--vary", vary, "--out", str(tmp_path / "s")])
    assert refused.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
