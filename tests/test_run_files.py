"""Run files that survive crashes: atomic writes, stale temporaries, and a torn last metrics row."""

import orjson
import pytest

from pipelines.files import atomic
from pipelines.files.atomic import remove_stale_temporaries, write_atomic
from pipelines.training.storage.metrics import MetricsLog, read_metrics, repair_metrics

ROWS = [{"step": 10, "train_loss": 3.0}, {"step": 20, "train_loss": 2.5}]
WHOLE = b"".join(orjson.dumps(row) + b"\n" for row in ROWS)


def test_an_atomic_write_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, b'{"status": "running"}')
    write_atomic(path, b'{"status": "completed"}')
    assert path.read_bytes() == b'{"status": "completed"}'
    with pytest.raises(OSError, match="disk full"), atomic.open_atomic(path) as f:
        f.write(b'{"status": ')
        raise OSError("disk full")
    assert path.read_bytes() == b'{"status": "completed"}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / ".last.pt.tmp4242", tmp_path / ".summary.json.tmp17"]
    kept = [tmp_path / "checkpoints" / "last.pt", tmp_path / ".lock", tmp_path / "metrics.jsonl",
            tmp_path / "notes.tmp1", tmp_path / ".last.pt.tmpx"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path) == []


@pytest.mark.parametrize("tail", [b'{"step": 30, "tra', b"\0\0\0\0", b'{"step": 30, "tra{"step": 40, "train_loss": 2.1}\n'])
def test_a_torn_last_line_is_skipped_by_readers_and_cut_before_a_resumed_run_appends(tmp_path, tail):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(WHOLE + tail)
    if tail.endswith(b"\n"):  # an earlier resume appended onto a torn line: the damage is inside the file
        with pytest.raises(ValueError, match=r"metrics.jsonl:3 is not valid JSON"):
            read_metrics(tmp_path)
    else:
        assert read_metrics(tmp_path) == ROWS
    log = MetricsLog(tmp_path)  # what a resumed run opens: it repairs first
    log.write({"step": 30, "train_loss": 2.0})
    log.close()
    assert metrics.read_bytes() == WHOLE + b'{"step":30,"train_loss":2.0}\n'
    assert read_metrics(tmp_path)[-1] == {"step": 30, "train_loss": 2.0}


def test_repair_keeps_a_whole_row_that_only_lacks_its_newline_and_leaves_sound_files_alone(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert not repair_metrics(tmp_path)  # no file yet
    metrics.write_bytes(WHOLE)
    assert not repair_metrics(tmp_path) and metrics.read_bytes() == WHOLE
    metrics.write_bytes(WHOLE.rstrip(b"\n"))
    assert repair_metrics(tmp_path) and metrics.read_bytes() == WHOLE
    metrics.write_bytes(b'{"step": 1')  # killed during the very first row
    assert read_metrics(tmp_path) == []
    assert repair_metrics(tmp_path) and metrics.read_bytes() == b""


def test_a_row_that_is_not_a_metrics_row_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(WHOLE + b"[1, 2]\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:3 is not a metrics row"):
        read_metrics(tmp_path)
