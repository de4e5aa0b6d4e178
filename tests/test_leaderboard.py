"""The leaderboard preset (issue 13, part 3): the `owt` dataset and its presets, the warm-up,
stable, decay schedule, OpenWebText's gzipped download (offline: one line), the accounting
estimate that sizes the preset, and the small tools of the CPU study (split_text, named
experiment-log sections)."""

import gzip
import math
import threading
from http.server import ThreadingHTTPServer

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.accounting import newton_schulz_flops, training_step_flops
from core.config import ModelConfig
from core.errors import UsageError
from core.optim import muon_labels
from core.optim.muon import newton_schulz
from core.schedule import cosine_schedule, warmup_stable_decay, wsd_schedule
from core.tree import tree_leaves_by_path
from params.init import init_params
from pipelines.experiments import accounting, experiment_log
from pipelines.experiments.split_text import split_text
from pipelines.training import cli
from pipelines.training.data import download as dl
from pipelines.training.config.config import resolve_config
from pipelines.training.config.optimizer import make_schedule
from pipelines.training.data.prepare import find_split
from pipelines.training.config.presets import LEADERBOARD_TARGET, PRESETS
from tests.test_download import Server, cut, files_under, handler_for

OWT_TRAIN = b"".join(f"Web page {i}.{' Some words here.' * (i % 41)}\n<|endoftext|>\n".encode() for i in range(20_000))
OWT_VALID = b"".join(f"Valid page {i}.\n<|endoftext|>\n".encode() for i in range(300))


# --- the preset ---------------------------------------------------------------------------------

def test_the_leaderboard_preset_resolves_with_the_records_recipe():
    config = resolve_config("owt", "leaderboard")
    model = config.model
    assert config.dataset == "owt"
    assert (model.vocab_size, model.context_length) == (32_000, 512)
    assert model.ffn == "relu2" and model.tie_embeddings and model.qk_norm and model.zero_init_out_proj and model.value_residual
    assert model.logit_softcap == 30.0
    assert config.optim.name == "muon" and config.schedule.kind == "wsd" and config.schedule.final_lr == 0.0
    assert config.compile
    # the command line reaches the same config, with flags over it
    args = cli.parser().parse_args(["owt", "--preset", "leaderboard", "--optim.muon_lr", "0.03"])
    from_cli = cli.config_from_args(args)
    assert from_cli.optim.muon_lr == 0.03 and from_cli.model == model


def test_owt_has_a_preset_for_each_device_and_unknown_datasets_are_named():
    assert {"baseline", "cpu-small", "leaderboard"} <= set(PRESETS["owt"])
    assert resolve_config("owt", "baseline").model.vocab_size == 32_000  # the handout's main_experiment
    assert resolve_config("owt", "cpu-small").data.train_mb == 16
    with pytest.raises(ValueError, match="unknown dataset 'owtt'"):
        resolve_config("owtt", "leaderboard")
    with pytest.raises(ValueError, match="unknown preset 'leaderboard' for tinystories"):
        resolve_config("tinystories", "leaderboard")


# --- the schedule -------------------------------------------------------------------------------

def test_wsd_warms_up_holds_then_decays_linearly_to_final_lr():
    schedule = warmup_stable_decay(1.0, 0.1, warmup_steps=4, decay_start=10, decay_steps=20)
    assert [schedule(t) for t in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert [schedule(t) for t in range(4, 11)] == [1.0] * 7
    assert schedule(15) == pytest.approx(0.55) and schedule(20) == pytest.approx(0.1)
    decay = [schedule(t) for t in range(10, 21)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert [schedule(t) for t in range(21, 25)] == [0.1] * 4
    assert wsd_schedule(7, 1.0, 0.0, 5, 7, 7) == 1.0 and wsd_schedule(8, 1.0, 0.0, 5, 7, 7) == 0.0  # empty decay
    for args in [(1.0, 0.1, 5, 4, 10), (1.0, 0.1, 0, 11, 10), (-1.0, 0.0, 0, 1, 2)]:
        with pytest.raises(ValueError, match="warmup_stable_decay"):
            warmup_stable_decay(*args)


def test_schedule_kind_picks_the_shape_and_the_default_is_unchanged():
    cosine = resolve_config("tinystories", "cpu-small")
    assert cosine.schedule.kind == "cosine"
    s = cosine.schedule
    assert [make_schedule(cosine)(t) for t in range(0, 700, 7)] == [
        cosine_schedule(t, s.lr, cosine.resolved_final_lr, s.warmup_steps, cosine.resolved_decay_steps) for t in range(0, 700, 7)
    ]
    wsd = resolve_config("tinystories", "cpu-small", {"schedule.kind": "wsd", "schedule.decay_fraction": 0.25,
                                                       "schedule.warmup_steps": 100, "max_steps": 500, "schedule.final_lr": 0.0})
    assert wsd.decay_start == 400  # the last quarter of the 400 steps after warm-up
    rate = make_schedule(wsd)
    assert rate(100) == rate(400) == wsd.schedule.lr and rate(450) == pytest.approx(wsd.schedule.lr / 2) and rate(500) == 0.0
    linear = resolve_config("tinystories", "cpu-small", {"schedule.kind": "wsd", "schedule.decay_fraction": 1.0})
    assert linear.decay_start == linear.schedule.warmup_steps


@pytest.mark.parametrize("flag, value", [("schedule.kind", "linear"), ("schedule.decay_fraction", "1.5")])
def test_bad_schedule_settings_fail_naming_the_setting(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as refused:
        cli.main(["owt", "--preset", "leaderboard", f"--{flag}", value, "--run_dir", str(tmp_path / "run")])
    assert refused.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- OpenWebText's download ---------------------------------------------------------------------

@pytest.fixture
def owt_server(monkeypatch):
    """A local server with the two files gzipped, train as two gzip members (as `cat a.gz b.gz`)."""
    half = len(OWT_TRAIN) // 2
    files = {"owt_train.txt.gz": gzip.compress(OWT_TRAIN[:half]) + gzip.compress(OWT_TRAIN[half:]),
             "owt_valid.txt.gz": gzip.compress(OWT_VALID)}
    state = Server(files=files)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setattr(dl, "OWT_URL", state.url)
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_owt_is_fetched_gzipped_and_unpacked_whole_or_as_a_prefix(owt_server, tmp_path):
    dest = tmp_path / "owt"
    full = dl.fetch_owt(dest)
    assert find_split(full, "train", ".txt").read_bytes() == OWT_TRAIN
    assert find_split(full, "valid", ".txt").read_bytes() == OWT_VALID
    assert not any(p.suffix in (".gz", ".part") for p in files_under(dest))  # unpacked, then removed

    prefix_dest = tmp_path / "owt-prefix"
    folder = dl.fetch_owt(prefix_dest, 1)
    train = find_split(folder, "train", ".txt")
    assert train.name == "owt_train.first1MB.txt" and train.read_bytes() == cut(OWT_TRAIN, dl.MB)
    assert f"bytes=0-{dl.MB - 1}" in owt_server.ranges  # only the first MiB of the .gz was asked for
    assert not any(p.suffix == ".gz" for p in files_under(prefix_dest))
    requests = len(owt_server.ranges)
    assert dl.fetch_owt(prefix_dest, 1) == folder and dl.fetch_owt(dest) == full
    assert len(owt_server.ranges) == requests  # done files are not fetched again


def test_a_truncated_whole_gzip_is_refused_and_removed(owt_server, tmp_path):
    owt_server.files["owt_valid.txt.gz"] = owt_server.files["owt_valid.txt.gz"][:-100]
    with pytest.raises(ValueError, match="ends inside its gzip stream"):
        dl.fetch_owt(tmp_path / "owt")
    assert not (tmp_path / "owt" / dl.GZ_DIR / "owt_valid.txt.gz").exists()
    assert not (tmp_path / "owt" / "full" / "owt_valid.txt").exists()


def test_owt_offline_the_error_is_one_line_naming_the_files_and_where(refused_url, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "OWT_URL", refused_url)
    for train_mb in (None, 16):
        with pytest.raises(UsageError) as error:
            dl.fetch_owt(tmp_path / "owt", train_mb)
        message = str(error.value)
        assert "\n" not in message and "--data.path" in message
        assert "owt_train.txt" in message and "owt_valid.txt" in message
        assert str(dl.size_folder(tmp_path / "owt", train_mb)) + "/" in message
    assert "owt_train.first16MB.txt" in message
    assert not any(p.suffix in (".txt", ".gz", ".part") for p in files_under(tmp_path))  # nothing half-fetched
    with pytest.raises(ValueError, match="no download known"):
        dl.fetch_dataset("wikitext", tmp_path)


# The leaderboard's batch of 64 needs about 37 GB, more than some test machines have, and the
# trainer checks memory before data: a batch of 8 keeps that check out of the way.
@pytest.mark.parametrize("argv", [["owt", "--preset", "leaderboard", "--data.batch_size", "8"], ["owt"]])
def test_just_train_owt_offline_fails_with_one_line_and_no_run_dir(argv, refused_url, tmp_path, monkeypatch, capsys):
    """`just train owt --preset leaderboard` (and plain `just train owt`) without a network: exit 2
    and one line on stderr, no traceback, no run directory."""
    monkeypatch.setattr(dl, "OWT_URL", refused_url)
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as refused:
        cli.main([*argv, "--device", "cpu", "--run_dir", str(tmp_path / "run")])
    assert refused.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not download" in errors[0] and "owt_train" in errors[0]
    assert "Traceback" not in errors[0]
    assert not (tmp_path / "run").exists()


# --- accounting ---------------------------------------------------------------------------------

def test_accounting_prints_the_leaderboard_estimate(capsys):
    accounting.main(["--preset", "leaderboard"])  # a bare preset name that one dataset has
    report = capsys.readouterr().out
    config = resolve_config("owt", "leaderboard")
    tokens = config.max_steps * config.data.batch_size * config.model.context_length
    assert f"{tokens:,} tokens" in report and "EFLOP in all" in report
    assert "H100 (989 TFLOP/s dense bf16 peak)" in report and f"{LEADERBOARD_TARGET.mfu:.0%} MFU" in report
    seconds = config.max_steps * training_step_flops(config.model, config.data.batch_size) / (989e12 * LEADERBOARD_TARGET.mfu)
    assert f"{seconds / 3600:.2f} h." in report
    assert "Budget: 1.5 h on one H100" in report and "the run fits" in report
    assert "Newton-Schulz" in report and "fused attention" in report

    accounting.main(["--preset", "owt/leaderboard", "--mfu", "0.1"])
    assert "does NOT fit" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^error: .*DATASET/PRESET"):
        accounting.main(["--preset", "cpu-small"])  # two datasets have one: ambiguous


@pytest.mark.parametrize("changes", [dict(), dict(ffn="swiglu"), dict(d_model=96, num_heads=4, d_ff=64)])
def test_newton_schulz_flops_match_torch_flop_counter(changes):
    config = ModelConfig(**{**dict(vocab_size=64, context_length=8, d_model=64, num_layers=2, num_heads=4, ffn="relu2"), **changes})
    params = init_params(config, torch.Generator().manual_seed(0))
    labels = tree_leaves_by_path(muon_labels(params))
    hidden = [leaf for name, leaf in tree_leaves_by_path(params).items() if labels[name] == "muon"]
    with FlopCounterMode(display=False) as counter:
        for matrix in hidden:
            newton_schulz(matrix.detach(), dtype=torch.float32)
    assert counter.get_total_flops() == newton_schulz_flops(config)


# --- the study's tools --------------------------------------------------------------------------

def test_split_text_cuts_at_a_paragraph_break_and_refuses_to_overwrite(tmp_path):
    source = tmp_path / "sample.txt"
    paragraphs = [f"Paragraph {i}. " + "word " * (i % 13) for i in range(200)]
    source.write_text("\n\n".join(paragraphs) + "\n")
    train, valid = split_text(source, tmp_path / "out", 0.1)
    assert train.read_bytes() + valid.read_bytes() == source.read_bytes()
    assert train.read_bytes().endswith(b"\n\n") and valid.read_text().startswith("Paragraph ")
    assert math.isclose(valid.stat().st_size / source.stat().st_size, 0.1, abs_tol=0.02)
    with pytest.raises(ValueError, match="already holds"):
        split_text(source, tmp_path / "out", 0.1)
    with pytest.raises(ValueError, match="paragraph break"):
        (tmp_path / "one.txt").write_text("no breaks at all")
        split_text(tmp_path / "one.txt", tmp_path / "out2", 0.1)


def test_named_experiment_log_sections_leave_each_other_alone(tmp_path):
    out = tmp_path / "log.md"
    out.write_text("intro\n")
    experiment_log.write_log(out, "unnamed table")
    experiment_log.write_log(out, "leaderboard v1", "leaderboard")
    experiment_log.write_log(out, "leaderboard v2", "leaderboard")
    text = out.read_text()
    assert text.startswith("intro\n") and "unnamed table" in text and "leaderboard v2" in text and "v1" not in text
    assert text.count("experiment-log:leaderboard:start") == 1
    with pytest.raises(ValueError, match="--section"):
        experiment_log.markers("two words")
