"""Time in the training loop (loop.py): the run's wall clock across resumes, its training
throughput, and which steps are boundaries (log, evaluate, checkpoint)."""

import time

from pipelines.training.config.config import TrainConfig


class Clock:
    """Wall-clock seconds of the run across resumes, and training throughput between boundaries."""

    def __init__(self, elapsed: float) -> None:
        self.started, self.before = time.perf_counter(), elapsed
        self.interval_start = self.started
        self.train_seconds, self.train_steps = 0.0, 0

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.started

    def interval(self, steps: int) -> float:
        """Seconds since the last pause, counted as the time of `steps` training steps."""
        seconds = time.perf_counter() - self.interval_start
        self.train_seconds, self.train_steps = self.train_seconds + seconds, self.train_steps + steps
        return seconds

    def pause(self) -> None:
        self.interval_start = time.perf_counter()

    def steps_per_s(self) -> float | None:
        return self.train_steps / self.train_seconds if self.train_seconds else None


def is_boundary(config: TrainConfig, step: int, stopping: bool) -> bool:
    """Whether the loop logs, evaluates or checkpoints after `step`."""
    every = (config.log_every, config.eval.every, config.checkpoint_every)
    return stopping or step == config.max_steps or any(step % n == 0 for n in every)
