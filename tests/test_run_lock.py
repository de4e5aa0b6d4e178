"""One run directory, one writer: the lock on RUN/.lock, held by a real second process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.training.storage.run_dir import LOCK_FILE
from pipelines.training.storage.run_lock import RunDirBusy, check_run_dir_free, lock_run_dir
from tests.commands import ROOT

_HOLD = """
import sys, time
from pipelines.training.storage.run_lock import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """A process that has locked `run_dir` and sleeps holding it."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "locked\n"
    return child


def test_a_second_writer_fails_at_once_naming_the_holder_until_a_kill_frees_the_directory(tmp_path):
    child = _holder(tmp_path)
    try:
        expected = (rf"^{tmp_path} is in use by pid {child.pid} on host {socket.gethostname()} "
                    rf"since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \(.*python.* -c .*\); two runs cannot write to one directory$")
        with pytest.raises(RunDirBusy, match=expected):
            check_run_dir_free(tmp_path)
        with pytest.raises(RunDirBusy, match=expected):
            lock_run_dir(tmp_path)
    finally:
        child.kill()  # SIGKILL: the holder gets no chance to unlock; the OS drops the lock with it
        child.wait()
        child.stdout.close()
    check_run_dir_free(tmp_path)
    with lock_run_dir(tmp_path):
        assert f'"pid":{os.getpid()}' in (tmp_path / LOCK_FILE).read_text()


def test_the_lock_excludes_a_second_lock_in_the_same_process_and_release_frees_it(tmp_path):
    lock = lock_run_dir(tmp_path)
    with pytest.raises(RunDirBusy, match=f"in use by pid {os.getpid()}"):
        lock_run_dir(tmp_path)
    lock.release()
    lock.release()  # twice is harmless
    with lock_run_dir(tmp_path):
        with pytest.raises(RunDirBusy):
            check_run_dir_free(tmp_path)
    check_run_dir_free(tmp_path)


def test_checking_creates_nothing_and_locking_needs_the_directory(tmp_path):
    run_dir = tmp_path / "new-run"
    check_run_dir_free(run_dir)
    assert not run_dir.exists()
    with pytest.raises(FileNotFoundError, match=f"cannot lock run directory {run_dir}: it does not exist"):
        lock_run_dir(run_dir)
