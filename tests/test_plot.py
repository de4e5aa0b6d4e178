"""Learning curves from run directories, and reading metrics.jsonl."""

import orjson
import pytest

from pipelines.training.storage.metrics import MetricsLog, read_metrics
from pipelines.experiments.plot import main, plot_runs


def _run(tmp_path, name, scale):
    run_dir = tmp_path / name
    run_dir.mkdir()
    log = MetricsLog(run_dir)
    for step in range(10, 110, 10):
        log.write({"step": step, "tokens": step * 64, "wall": step / 10, "train_loss": scale * 5 / step ** 0.3,
                   "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 640.0})
        if step % 50 == 0:
            log.write({"step": step, "tokens": step * 64, "wall": step / 10, "val_loss": scale * 5.5 / step ** 0.3})
    log.close()
    return run_dir


def test_plot_runs_overlays_several_runs_into_one_png(tmp_path):
    runs = [_run(tmp_path, "a", 1.0), _run(tmp_path, "b", 1.2)]
    out = plot_runs(runs, tmp_path / "plots" / "curves.png", labels=["lr 1e-3", "lr 3e-3"], title="lr sweep")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plot_runs(runs, tmp_path / "x.png", labels=["one"])


def test_plot_cli_defaults_to_the_run_directory(tmp_path, capsys):
    run = _run(tmp_path, "a", 1.0)
    main([str(run)])
    assert capsys.readouterr().out.strip() == f"wrote {run / 'plots' / 'loss.png'}"
    assert (run / "plots" / "loss.png").exists()


def test_read_metrics_keeps_the_latest_row_per_step_and_skips_a_torn_last_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 10, "train_loss": 3.0}, {"step": 10, "val_loss": 3.1}, {"step": 20, "train_loss": 2.5},
            {"step": 20, "train_loss": 2.4}]  # step 20 logged again after a resume
    (run / "metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"step": 30, "tra')
    assert read_metrics(run) == [rows[0], rows[1], rows[3]]
    with pytest.raises(FileNotFoundError, match="training run directory"):
        read_metrics(tmp_path / "nothing")


def test_plot_cli_writes_beside_what_it_draws_never_into_the_working_tree(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    runs = [_run(sweep, "a", 1.0), _run(sweep, "b", 1.2)]
    main([str(run) for run in runs])
    assert (sweep / "plots" / "loss.png").exists()  # a sweep's runs: the sweep's folder
    # Runs with no folder of their own in common: runs/plots/ (ignored by git), not plots/ at the root.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    main([str(_run(tmp_path / "x", "c", 1.1)), "sweep/a"])
    assert (tmp_path / "runs" / "plots" / "loss.png").exists() and not (tmp_path / "plots").exists()


def test_plot_cli_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^error: .*empty is not a run directory: it has no metrics.jsonl$") as refused:
        main([str(tmp_path / "empty")])
    assert refused.value.code == 2
    with pytest.raises(SystemExit, match=r"^error: --labels: 1 labels for 2 runs$"):
        main([str(_run(tmp_path, "a", 1.0)), str(_run(tmp_path, "b", 1.0)), "--labels", "one"])
