"""`--nproc N`: check and prepare everything once, here, then start N trainers under torchrun's agent
run inside this process.

Before a single worker starts, this process makes every check the run allows (settings that data
parallelism refuses, the device and its count, the run directory, a checkpoint to resume, the
model's memory) and prepares the data into the cache (the tokenizer trained, the text encoded):
a refusal is one line and no process is started, and the workers find everything made, so no two
of them ever write the same file. The workers read the resolved config from a file (so all
of them agree on it, down to the time-stamped run directory); the main one takes the run
directory (pipelines/training/run/start.py).

torchrun's agent runs in this process rather than as a program of its own, so the workers are
this process's children: killed, it takes them down with it (pipelines/training/distributed/worker.py),
and their failure comes back here as an exception to explain in one line instead of the agent's
traceback. The workers explain their own refusals (the main one prints them); this process adds a
line only for what they could not say: a worker killed by a signal.
"""

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from core.errors import UsageError
from pipelines.command import EXIT_INTERRUPTED
from pipelines.training.config.config import TrainConfig
from pipelines.training.distributed.worker import GRACE_S, LAUNCH_SCRATCH, LAUNCHER_PID
from pipelines.training.hardware.device_check import require_device
from pipelines.training.run.start import check_before_work, with_run_dir


def launch(config: TrainConfig, nproc: int, *, resume: bool) -> int:
    """Train `config` on `nproc` processes of this machine; the exit code of the run (the main
    worker's). Refusals before the start raise UsageError."""
    config = check_before_launch(config, nproc, resume=resume)
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // nproc))
    print(f"starting {nproc} processes ({threads} thread{'s' * (threads > 1)} each) for {config.run_dir}", file=sys.stderr)
    sys.stderr.flush()
    scratch = Path(tempfile.mkdtemp(prefix="lmkit-launch-"))
    try:
        (scratch / "config.json").write_bytes(orjson.dumps(config.to_dict()))
        # --run_dir too: a resume names its run directory on the command line (the config file holds it as well)
        worker_argv = [config.dataset, "--config", str(scratch / "config.json"), "--run_dir", str(config.run_dir),
                       *(["--resume"] if resume else [])]
        # What the workers inherit: torchrun passes this process's environment on.
        with _environment({"OMP_NUM_THREADS": str(threads), LAUNCHER_PID: str(os.getpid()), LAUNCH_SCRATCH: str(scratch)}):
            return _run_agent(nproc, worker_argv, scratch / "logs")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_before_launch(config: TrainConfig, nproc: int, *, resume: bool) -> TrainConfig:
    """Every check the workers would make at their start, made once before any is started (with
    the data prepared into the cache on the way); `config` with its run directory named."""
    if not (dist.is_available() and dist.is_gloo_available()):
        raise UsageError("--nproc: this torch build has no torch.distributed (gloo) support")
    device = require_device(config.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {nproc}: one GPU per process, and this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"--nproc {nproc}: data-parallel training runs on CUDA or the CPU, not on {device.type}")
    if config.gns:
        config.gns_batch_sizes(nproc)
    config = with_run_dir(config)
    check_before_work(config, resume, device)
    return config


def _run_agent(nproc: int, worker_argv: list[str], log_dir: Path) -> int:
    """torchrun --standalone, in this process, starting `nproc` trainers with `worker_argv`."""
    agent_args = parse_args([
        "--standalone", f"--nproc-per-node={nproc}", f"--log-dir={log_dir}", f"--shutdown-timeout={int(GRACE_S)}",
        "-m", "pipelines.training.cli", *worker_argv,
    ])
    _quiet_agent_logs()
    try:
        run(agent_args)
    except ChildFailedError as failed:
        return _explain(failed.failures)
    except SignalException as signalled:  # passed on to the workers (each in a session of its own), which save and stop
        return EXIT_INTERRUPTED if signalled.sigval == signal.SIGINT else 128 + int(signalled.sigval)
    return 0


def _explain(failures: dict) -> int:
    """Say what the workers could not: one line for each killed by a signal, leaving out those the
    agent itself stopped with SIGTERM after another had failed. The exit code: the main worker's,
    else the first failure's."""
    failures = dict(sorted(failures.items()))
    causes = {rank: failure for rank, failure in failures.items() if failure.exitcode != -signal.SIGTERM} or failures
    for rank, failure in causes.items():
        if failure.exitcode < 0:
            print(f"error: process {rank} (pid {failure.pid}) was killed by {signal.Signals(-failure.exitcode).name}", file=sys.stderr)
    codes = [failure.exitcode for failure in failures.values() if failure.exitcode > 0]
    return codes[0] if codes else 1


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _quiet_agent_logs() -> None:
    # The agent logs each start, stop and failure as a warning; this process reports them itself.
    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run"):
        agent_logs = logging.getLogger(name)
        agent_logs.addHandler(logging.NullHandler())
        agent_logs.propagate = False
