"""What a trainer started by torchrun does first: stop when its parent dies, and let only the main
process speak.

torchrun's agent (the `--nproc` launcher itself, pipelines/training/distributed/launch.py, or a
`torchrun` typed by hand) is each worker's parent. Killed with SIGKILL, it cannot stop its
workers, and they would train on to the end holding the run's lock. So each worker watches its
parent: once the parent is gone (the worker has been handed to another), the worker removes the
launcher's temporary folder and sends itself SIGTERM, which the training loop answers as it
answers a user's SIGTERM: stop after this step and write a checkpoint (at start-up, SIGTERM simply
ends the process). A worker that has not stopped GRACE_S seconds later is killed outright.

Every process would otherwise print the same lines (the data it found, the notes, the same
refusal). The processes other than the main one (RANK 0) write nothing: their stdout and stderr
go to /dev/null, down to the file descriptors (so a library's C++ warnings too). A real crash is
still shown: a Python exception that ends one of them is printed, traceback and all, to the
stderr it was started with.
"""

import os
import shutil
import signal
import sys
import threading
import time
import traceback
from types import TracebackType

WATCH_EVERY_S = 0.2
GRACE_S = 60.0  # to finish the step and write a checkpoint after SIGTERM
LAUNCHER_PID = "LMKIT_LAUNCHER_PID"  # set by launch.py: the parent the workers must have
LAUNCH_SCRATCH = "LMKIT_LAUNCH_SCRATCH"  # set by launch.py: its temporary folder, which it removes unless killed


def become_worker() -> None:
    """Set up this torchrun worker: watch the parent; silence every process but the main one."""
    parent = int(os.environ.get(LAUNCHER_PID, os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), name="lmkit-parent-watch", daemon=True).start()
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        _silence(rank)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_EVERY_S)
    if os.environ.get(LAUNCH_SCRATCH):  # the launcher could not remove it
        shutil.rmtree(os.environ[LAUNCH_SCRATCH], ignore_errors=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the loop stops after this step and saves
    time.sleep(GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


def _silence(rank: int) -> None:
    """Send this process's stdout and stderr to /dev/null, keeping the real stderr for a crash."""
    sys.stdout.flush()
    sys.stderr.flush()
    crash_stream = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)

    def report_crash(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        crash_stream.write(f"process {rank} crashed:\n{''.join(traceback.format_exception(kind, error, tb))}")
        crash_stream.flush()

    sys.excepthook = report_crash
