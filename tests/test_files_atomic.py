"""pipelines/files: the one atomic writer (files and folders), its temporary names and their
cleanup, a full disk named, and the one lock (held by a real second process)."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UsageError
from pipelines.files import atomic
from pipelines.files.atomic import (
    DiskFull, build_folder, copy_folder, is_temporary, link_atomic, remove_stale_temporaries, temporary_path, write_atomic,
)
from pipelines.files.lock import Busy, acquire, hold, lock_path
from tests.commands import ROOT


def test_the_cleanup_matches_every_temporary_the_writer_names_and_nothing_else(tmp_path):
    names = [temporary_path(tmp_path / name).name for name in ("last.pt", "vocab.json", "tokenizer", ".lock", "a b.npy")]
    assert len({temporary_path(tmp_path / "x").name for _ in range(100)}) == 100  # unique per writer, same pid
    for name, of in zip(names, ("last.pt", "vocab.json", "tokenizer", ".lock", "a b.npy")):
        assert is_temporary(name) and is_temporary(name, of) and not is_temporary(name, "other")
        assert name.startswith(f".{of}.tmp{os.getpid()}-")
    for name in ("last.pt", ".lock", ".last.pt.lock", "notes.tmp1", ".last.pt.tmpx", ".x.tmp12-nothex!"):
        assert not is_temporary(name)


_KILLED_MIDWAY = """
import sys, time
from pathlib import Path
from pipelines.files.atomic import build_folder, open_atomic
folder = Path(sys.argv[1])
with open_atomic(folder / "summary.json") as f, build_folder(folder / "tokenizer") as building:
    f.write(b"half")
    (building / "vocab.json").write_text("{}")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_the_cleanup_removes_what_a_writer_killed_midway_left_and_nothing_else(tmp_path):
    (tmp_path / "keep").write_bytes(b"")
    (tmp_path / ".tokenizer.tmpx").mkdir()  # not a name the writer makes: kept
    child = subprocess.Popen([sys.executable, "-c", _KILLED_MIDWAY, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.kill()  # SIGKILL, as kill -9: nothing is cleaned up
        child.wait()
        child.stdout.close()
    debris = sorted(p for p in tmp_path.iterdir() if p.name.startswith((".summary.json.tmp", ".tokenizer.tmp")) and p.name != ".tokenizer.tmpx")
    assert [p.name.split(".tmp")[0] for p in debris] == [".summary.json", ".tokenizer"]
    assert all(p.name.split(".tmp")[1].startswith(f"{child.pid}-") for p in debris)
    assert remove_stale_temporaries(tmp_path, of="tokenizer") == [debris[1]]
    assert remove_stale_temporaries(tmp_path) == [debris[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tokenizer.tmpx", "keep"]


def test_a_folder_is_whole_or_absent_and_replaced_only_when_asked(tmp_path):
    target = tmp_path / "tok"
    with pytest.raises(RuntimeError), build_folder(target) as building:
        (building / "vocab.json").write_text("{}")
        raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()  # an empty folder is taken over
    with build_folder(target) as building:
        (building / "a").write_text("1")
        (building / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    with pytest.raises(FileExistsError, match="tok already exists and is not empty$"):
        copy_folder(target, target, replace=False)
    source = tmp_path / "source"
    source.mkdir()
    (source / "c").write_text("3")
    copy_folder(source, target, replace=True)
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "tok"]  # the old folder is gone too


def test_a_link_is_a_second_name_a_copy_without_hard_links_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    source, path = tmp_path / "last.pt", tmp_path / "final.pt"
    write_atomic(source, b"step 6")
    write_atomic(path, b"old")
    link_atomic(source, path)
    assert os.path.samefile(source, path)
    write_atomic(source, b"step 8")  # a new file under the source's name: the link keeps step 6
    assert path.read_bytes() == b"step 6"

    def refuse(*_):
        raise OSError(errno.EPERM, "no hard links here")
    monkeypatch.setattr(os, "link", refuse)
    link_atomic(source, path)
    assert path.read_bytes() == b"step 8" and not os.path.samefile(source, path)
    monkeypatch.undo()

    def fail(*_):
        raise OSError(errno.EIO, "rename failed")
    write_atomic(source, b"step 10")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        link_atomic(source, path)
    assert path.read_bytes() == b"step 8" and sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "last.pt"]


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    path = tmp_path / "ids.npy"
    write_atomic(path, b"old")
    full = tmp_path / ".ids.npy.tmp1-00000000"
    full.symlink_to("/dev/full")
    monkeypatch.setattr(atomic, "temporary_path", lambda _: full)
    with pytest.raises(DiskFull, match=f"^cannot write {path}: No space left on device$") as raised:
        write_atomic(path, b"new" * 100_000)
    assert isinstance(raised.value, OSError) and isinstance(raised.value, UsageError)
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy"]


_HOLD = """
import sys, time
from pipelines.files.lock import hold
lock = hold(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def _holder(output: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(output)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "locked\n"
    return child


def test_a_second_writer_is_told_who_holds_the_output_and_a_kill_frees_it(tmp_path, capsys):
    out = tmp_path / "ids.npy"
    child = _holder(out)
    try:
        def refuse(holder: str) -> None:
            raise Busy(f"busy: {holder}")
        with pytest.raises(Busy, match=rf"^busy: pid {child.pid} on host .* \(.*python.* -c .*\)$"):
            acquire(lock_path(out), on_busy=refuse, remove=True)
    finally:
        child.kill()  # SIGKILL: the OS drops the lock; the lock file stays, and is reused
        child.wait()
        child.stdout.close()
    with hold(out) as lock:
        assert not lock.waited and lock_path(out).exists()
    assert not lock_path(out).exists()  # released: no lock file left beside the output
    assert capsys.readouterr().err == ""


def test_a_second_writer_waits_for_the_first_and_knows_it_waited(tmp_path):
    out = tmp_path / "tok"
    with hold(out):
        waiter = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pipelines.files.lock import hold\nwith hold(sys.argv[1]) as lock: print(lock.waited)", str(out)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert waiter.stderr.readline().startswith(f"waiting for pid {os.getpid()} ")
        assert waiter.poll() is None
    stdout, _ = waiter.communicate(timeout=60)
    assert stdout == "True\n"
    assert not lock_path(out).exists()
