"""Data parallelism on torch.distributed (gloo, two processes on the CPU): the bucketed, overlapped
gradient average equals one process on the whole batch; the start is synchronised; the trainer
under torchrun matches one process, writes one checkpoint that one process resumes, and a dead
process stops the others instead of leaving them waiting."""

import os
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.config import ModelConfig
from core.optim import adamw, chain, clip_by_global_norm, decay_matrices
from core.train_state import init_train_state
from core.train_step import make_train_step
from core.tree import tree_leaves
from params.init import init_params
from pipelines.training.storage.checkpoint import read_train_state
from pipelines.training.config.config import with_overrides
from pipelines.training.distributed.processes import Processes
from pipelines.training.distributed.grad_sync import BucketedGradSync
from pipelines.training.run.loop import train
from pipelines.training.storage.run_dir import METRICS_FILE, SUMMARY_FILE, checkpoint_path
from pipelines.training.config.optimizer import make_optimizer
from pipelines.training.distributed.sharding import Sharding
from pipelines.training.run.start import _first_state
from tests.commands import ROOT
from tests.runs import TINY, children, tiny_config, trainer_command, wait_for_progress

CONFIGS = {
    "baseline": ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2),
    "tied": ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, tie_embeddings=True),
}
STEPS, BATCH = 4, 8
# float64, so that the two sums' different rounding stays far below the tolerance even where Adam
# divides by a tiny second moment.
DTYPE = torch.float64


def optimizer():
    return chain(clip_by_global_norm(0.5), adamw(3e-3, weight_decay=0.1, mask=decay_matrices))


def batches(config: ModelConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    tokens = [torch.randint(0, config.vocab_size, (BATCH, config.context_length + 1), generator=generator) for _ in range(STEPS)]
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def one_process(config: ModelConfig, accumulate: int = 1) -> list[torch.Tensor]:
    step = make_train_step(config, optimizer(), donate=True, accumulate=accumulate)
    state = init_train_state(init_params(config, torch.Generator().manual_seed(0), dtype=DTYPE), optimizer(), rng=0)
    for batch in batches(config):
        state, _ = step(state, batch)
    return tree_leaves(state.params)


def _worker(rank: int, world: int, store: str, results: str) -> None:
    """Each rank: the trainer's synchronised start from a seed of its own; then, for each config
    and gradient mode, STEPS steps on its half of each batch from the same initial weights.
    Saves what it ends with, for the test to compare."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        processes = Processes(rank, world)
        start = _first_state(tiny_config(Path("-"), Path("-"), {"seed": 17 * rank}), torch.device("cpu"), processes, None, optimizer())
        out = {"start": tree_leaves(start.params), "rng": start.rng}
        for name, config in CONFIGS.items():
            for grad_mode in ("autograd", "func"):
                state = init_train_state(init_params(config, torch.Generator().manual_seed(0), dtype=DTYPE), optimizer(), rng=0)
                sync = BucketedGradSync(tree_leaves(state.params), bucket_bytes=4096)  # several buckets
                step = make_train_step(config, optimizer(), grad_mode=grad_mode, donate=True, sync=sync)
                for x, y in batches(config):
                    mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
                    state, metrics = step(state, (x[mine], y[mine]))
                out[f"{name}-{grad_mode}"] = tree_leaves(state.params)
                out[f"{name}-{grad_mode}-loss"] = metrics["loss"]
        out["sharded"], out["unsharded"] = (_sharded_run(processes, shard) for shard in (True, False))
        torch.save(out, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def _sharded_run(processes: Processes, shard: bool) -> list:
    """The trainer's AdamW on this process's half of each batch, with the moments sharded or not;
    the final parameters and the (gathered) optimizer state."""
    config = tiny_config(Path("-"), Path("-"), {"model.vocab_size": 64})
    optimizer = make_optimizer(config)
    state = init_train_state(init_params(config.model, torch.Generator().manual_seed(0), dtype=DTYPE), optimizer, rng=0)
    sync = BucketedGradSync(tree_leaves(state.params), bucket_bytes=4096)
    sharding = Sharding.of(state.params, processes) if shard else None
    if sharding is not None:
        state = state.replace(opt_state=sharding.split(state.opt_state))
        step = sharding.stepping(make_train_step(config.model, sharding.optimizer(config), donate=True, sync=sync))
    else:
        step = make_train_step(config.model, optimizer, donate=True, sync=sync)
    for x, y in batches(config.model):
        mine = slice(processes.rank * BATCH // processes.world, (processes.rank + 1) * BATCH // processes.world)
        state, _ = step(state, (x[mine], y[mine]))
    if sharding is not None:
        out = [sum(t.numel() for t in tree_leaves(state.opt_state) if isinstance(t, torch.Tensor))]
        state = sharding.gathered(state)
    else:
        out = [sum(t.numel() for t in tree_leaves(state.opt_state) if isinstance(t, torch.Tensor))]
    return out + [t for t in tree_leaves((state.params, state.opt_state))]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    directory = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, str(directory / "store"), str(directory / "out")), nprocs=2)
    return [torch.load(directory / f"out.{rank}") for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("grad_mode", ["autograd", "func"])
def test_two_ranks_on_half_batches_equal_one_process_on_the_whole_batch(two_ranks, name, grad_mode):
    expected = one_process(CONFIGS[name])
    for result in two_ranks:
        for ours, theirs in zip(result[f"{name}-{grad_mode}"], expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)
    assert torch.equal(two_ranks[0][f"{name}-{grad_mode}-loss"], two_ranks[1][f"{name}-{grad_mode}-loss"])


def test_sharded_optimizer_state_equals_unsharded_adamw_at_about_half_the_memory(two_ranks):
    for result in two_ranks:
        (sharded_floats, *sharded), (full_floats, *full) = result["sharded"], result["unsharded"]
        assert len(sharded) == len(full)  # parameters, then the gathered moments and counts: exactly equal
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(sharded, full, strict=True))
        assert 0.3 * full_floats < sharded_floats < 0.7 * full_floats
    assert two_ranks[0]["sharded"][0] + two_ranks[1]["sharded"][0] == two_ranks[0]["unsharded"][0]


def test_ranks_started_with_different_seeds_start_identical(two_ranks):
    first, second = two_ranks
    assert first["rng"] == second["rng"] == 0  # rank 0's seed
    assert all(torch.equal(a, b) for a, b in zip(first["start"], second["start"], strict=True))


def test_gradient_accumulation_of_k_micro_batches_equals_one_batch():
    config = CONFIGS["baseline"]
    for ours, theirs in zip(one_process(config, accumulate=4), one_process(config), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)


def torchrun_command(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """The trainer on two processes, through the CLI's --nproc (torchrun's agent in the launcher)."""
    return trainer_command(data, run_dir, TINY, "--nproc", "2", *extra)


@pytest.mark.slow
def test_a_two_process_sharded_run_checkpoints_once_and_one_process_resumes_it_on_the_same_global_batch(token_dir, tmp_path):
    halves = tmp_path / "two"
    result = subprocess.run(torchrun_command(token_dir, halves, "--set=data.batch_size=4", "--set=schedule.decay_steps=20", "--set=shard_optimizer=true", "--max_steps", "10"),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert orjson.loads((halves / SUMMARY_FILE).read_bytes())["status"] == "completed"
    rows = [orjson.loads(line) for line in (halves / METRICS_FILE).read_bytes().splitlines()]
    assert [row["step"] for row in rows if "train_loss" in row] == [5, 10]  # one writer, one row per boundary
    assert rows[0]["tokens"] == 5 * 8 * 16  # the global batch: 2 processes x 4 rows

    config = tiny_config(token_dir, halves, {"max_steps": 20, "data.batch_size": 8, "schedule.decay_steps": 20})
    resumed = read_train_state(checkpoint_path(train(config, resume=True), "final.pt"))["params"]
    straight = read_train_state(checkpoint_path(train(with_overrides(config, {"run_dir": str(tmp_path / "one")})), "final.pt"))["params"]
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_process_that_dies_stops_the_others_with_a_clear_error(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(torchrun_command(token_dir, run_dir, "--max_steps", "1000000", "--log_every", "1"),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(launcher, run_dir)
        assert launcher.poll() is None, "the run ended before the test could act"
        worker = _worker_pid(launcher.pid, rank=1)
        os.kill(worker, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)  # not hanging: everything exits
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert f"error: process 1 (pid {worker}) was killed by SIGKILL" in stderr  # the launcher's line
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr  # nobody's traceback, not torchrun's either


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of the trainer the launcher (torchrun's agent runs in it) started as `rank`."""
    for worker in children(launcher):
        try:
            if f"RANK={rank}".encode() in (Path("/proc") / str(worker) / "environ").read_bytes().split(b"\0"):
                return worker
        except OSError:
            continue
    raise AssertionError(f"no trainer process with RANK={rank}")


@pytest.mark.slow
def test_sigint_to_torchrun_stops_every_process_at_one_step_with_one_checkpoint(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(torchrun_command(token_dir, run_dir, "--max_steps", "1000000", "--log_every", "1",
                                                 "--set=checkpoint_every=100000", "--set=eval.every=100000"),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(launcher, run_dir)
        assert launcher.poll() is None, "the run ended before the test could act"
        launcher.send_signal(signal.SIGINT)  # torchrun passes it on to every process
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    summary = orjson.loads((run_dir / SUMMARY_FILE).read_bytes())
    assert summary["status"] == "interrupted", stderr[-2000:]
    assert read_train_state(checkpoint_path(run_dir))["step"] == summary["step"] > 0
    assert stderr.count("interrupted at step") == 1  # the main process's one report
