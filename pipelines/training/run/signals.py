"""Stopping a run cleanly on SIGINT / SIGTERM."""

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class StopFlag:
    requested = False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM ask the loop to stop at the end of the current step (it then checkpoints);
    a second SIGINT interrupts at once. Signals can only be caught on the main thread, so a run
    started from another thread keeps the default behaviour."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
