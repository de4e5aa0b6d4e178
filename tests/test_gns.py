"""The gradient noise scale (core/gns.py): the two-batch estimator recovers a known |G|² and tr Σ;
on a tiny model, the estimates the training step's micro-batches give agree with per-example
gradients computed directly; `--gns` through the trainer logs the three keys, on one process with
accumulation and on two processes without; a run that has only one batch size is refused."""

import struct
import subprocess
from pathlib import Path

import pytest
import torch

from core.config import ModelConfig
from core.gns import NoiseScale, two_batch_estimates
from core.optim import adamw
from core.train_state import init_train_state
from core.train_step import loss_fn, make_train_step
from core.tree import tree_leaves
from params.init import init_params
from pipelines.experiments.plot import plot_runs
from pipelines.training.cli import main
from pipelines.training.storage.metrics import read_metrics
from tests.commands import ROOT
from tests.runs import TINY, trainer_argv, trainer_command


GNS_KEYS = {"gns_b_simple", "gns_grad_sq", "gns_trace"}
# The tolerance of the statistical checks: the mean of R independent unbiased estimates lies within
# 4 standard errors of the truth but for a chance of about 6e-5 (normal approximation; with R in
# the hundreds the mean is close to normal). The draws are seeded, so each test is deterministic.
STANDARD_ERRORS = 4


def _agrees(estimates: torch.Tensor, truth: float) -> tuple[bool, str]:
    """Whether the mean of `estimates` lies within STANDARD_ERRORS of `truth`, and the numbers."""
    mean, error = float(estimates.mean()), float(estimates.std() / len(estimates) ** 0.5)
    return abs(mean - truth) <= STANDARD_ERRORS * error, f"mean {mean:.4g} +- {error:.3g}, truth {truth:.4g}"


def test_the_two_batch_estimator_recovers_a_known_mean_and_covariance():
    """Gradients drawn as G + noise with a known diagonal covariance, grouped as a training step
    groups them: K micro-batches of b examples; small = the micro-batches' mean |g|², big = |mean|²."""
    generator = torch.Generator().manual_seed(0)
    dims, b, k, repeats = 40, 4, 8, 4000
    mean = torch.linspace(-0.3, 0.3, dims, dtype=torch.float64)
    std = torch.linspace(0.1, 1.5, dims, dtype=torch.float64)
    samples = mean + std * torch.randn(repeats, k, b, dims, generator=generator, dtype=torch.float64)
    micro = samples.mean(2)  # (repeats, k, dims)
    small_sq = micro.square().sum(-1).mean(1)
    big_sq = micro.mean(1).square().sum(-1)
    grad_sq, trace = two_batch_estimates(small_sq, big_sq, b, k * b)
    for estimates, truth in ((grad_sq, float(mean.square().sum())), (trace, float(std.square().sum()))):
        ok, numbers = _agrees(estimates, truth)
        assert ok, numbers
        assert estimates.std() / repeats**0.5 < 0.05 * truth  # a tolerance that could fail
    with pytest.raises(ValueError, match="b_small < b_big"):
        two_batch_estimates(small_sq, big_sq, 8, 8)


def test_the_moving_averages_start_unbiased_and_do_not_depend_on_how_steps_are_grouped():
    assert NoiseScale().readout() == {"gns_b_simple": None, "gns_grad_sq": None, "gns_trace": None}
    constant = NoiseScale().updated(torch.tensor([2.0]), torch.tensor([10.0]))
    assert constant.readout() == pytest.approx({"gns_b_simple": 5.0, "gns_grad_sq": 2.0, "gns_trace": 10.0})
    grad_sq, trace = torch.randn(30, dtype=torch.float64) + 1, torch.rand(30, dtype=torch.float64) * 10
    at_once = NoiseScale().updated(grad_sq, trace)
    in_parts = NoiseScale().updated(grad_sq[:7], trace[:7]).updated(grad_sq[7:], trace[7:])
    assert at_once.readout() == pytest.approx(in_parts.readout())
    weights = 0.99 ** torch.arange(29, -1, -1, dtype=torch.float64)  # the last step weighs most
    assert at_once.readout()["gns_grad_sq"] == pytest.approx(float((weights * grad_sq).sum() / weights.sum()))
    assert NoiseScale().updated(torch.tensor([-1.0]), torch.tensor([3.0])).readout()["gns_b_simple"] is None


CONFIG = ModelConfig(vocab_size=32, context_length=16, d_model=32, num_layers=1, num_heads=2, kernels="reference")


def _pool(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` sequences of Zipf-distributed tokens: the mean gradient (towards the unigram
    distribution) is not swamped by the noise, so B_simple is a few sequences."""
    probs = 1.0 / torch.arange(1, CONFIG.vocab_size + 1, dtype=torch.float64)
    tokens = torch.multinomial(probs, size * (CONFIG.context_length + 1), replacement=True, generator=torch.Generator().manual_seed(1))
    tokens = tokens.view(size, CONFIG.context_length + 1)
    return tokens[:, :-1], tokens[:, 1:]


def _per_example_truth(params, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """|G|² and tr Σ of the pool itself, from every sequence's own gradient (vmap over grad)."""
    one = torch.func.grad(lambda p, xi, yi: loss_fn(p, xi[None], yi[None], CONFIG))
    per_example = torch.func.vmap(one, in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([leaf.reshape(len(x), -1) for leaf in tree_leaves(per_example)], dim=1)
    mean = flat.mean(0)
    # Batches are drawn from the pool with replacement, so the pool's own (1/N) covariance is Σ.
    return float(mean.square().sum()), float((flat - mean).square().sum(1).mean())


@pytest.mark.slow
def test_the_steps_micro_batches_agree_with_per_example_gradients():
    """At one parameter point, the training step with gns=True on many batches drawn from a pool
    of 64 sequences: the mean of its per-step estimates matches the pool's |G|² and tr Σ (seeded:
    |G|² 1.114 +- 0.023 against 1.086, tr Σ 6.265 +- 0.043 against 6.246, B_simple 5.75)."""
    params = init_params(CONFIG, torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = _pool(64)
    grad_sq_truth, trace_truth = _per_example_truth(params, x, y)
    b, k, repeats = 2, 4, 400
    state = init_train_state(params, adamw(1e-3), rng=0)
    step = make_train_step(CONFIG, adamw(1e-3), accumulate=k, gns=True)  # not donating: the state is reused
    generator = torch.Generator().manual_seed(2)
    small_sq, big_sq = [], []
    for _ in range(repeats):
        rows = torch.randint(0, len(x), (k * b,), generator=generator)
        _, metrics = step(state, (x[rows], y[rows]))
        small_sq.append(metrics["micro_grad_sq"])
        big_sq.append(metrics["grad_norm"].square())
    grad_sq, trace = two_batch_estimates(torch.stack(small_sq), torch.stack(big_sq), b, k * b)
    for estimates, truth in ((grad_sq, grad_sq_truth), (trace, trace_truth)):
        ok, numbers = _agrees(estimates, truth)
        assert ok, numbers
        assert estimates.std() / repeats**0.5 < 0.05 * truth  # the check has teeth
    # The ratio of the means is off by at most the sum of their relative errors: 4 x (2% + 0.7%).
    assert float(trace.mean() / grad_sq.mean()) == pytest.approx(trace_truth / grad_sq_truth, rel=0.12)


def test_with_one_micro_batch_the_small_gradient_is_the_whole_one():
    """Without accumulation (the data-parallel source: one micro-batch is this process's batch)."""
    params = init_params(CONFIG, torch.Generator().manual_seed(0))
    x, y = _pool(4)
    _, metrics = make_train_step(CONFIG, adamw(1e-3), gns=True)(init_train_state(params, adamw(1e-3), rng=0), (x, y))
    torch.testing.assert_close(metrics["micro_grad_sq"], metrics["grad_norm"].square())
    _, metrics = make_train_step(CONFIG, adamw(1e-3))(init_train_state(params, adamw(1e-3), rng=0), (x, y))
    assert "micro_grad_sq" not in metrics


def _noise_rows(run_dir: Path) -> list[dict]:
    rows = [r for r in read_metrics(run_dir) if "train_loss" in r]
    assert rows and all(GNS_KEYS <= set(r) for r in rows)
    return rows


def test_gns_through_the_trainer_logs_the_noise_scale_and_plot_draws_it(token_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert main(trainer_argv(token_dir, run_dir, TINY, "--gns", "--grad_accum", "2", "--max_steps", "20")) == 0
    rows = _noise_rows(run_dir)
    last = rows[-1]
    assert last["gns_trace"] > 0 and last["gns_grad_sq"] > 0
    assert last["gns_b_simple"] == pytest.approx(last["gns_trace"] / last["gns_grad_sq"])
    plain = tmp_path / "plain"
    assert main(trainer_argv(token_dir, plain, TINY, "--max_steps", "5")) == 0
    assert not GNS_KEYS & set(read_metrics(plain)[0])
    widths = [_png_width(plot_runs(runs, tmp_path / f"{len(runs)}.png")) for runs in ([plain], [plain, run_dir])]
    assert widths[1] == widths[0] * 3 // 2  # a third panel, for the run that measured B_simple


def _png_width(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_gns_with_one_batch_size_is_refused_in_one_line_before_any_work(token_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(trainer_argv(token_dir, tmp_path / "run", TINY, "--gns", "--max_steps", "5"))
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--gns" in error and "grad_accum >= 2" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_gns_on_two_processes_compares_each_local_gradient_with_the_average(token_dir, tmp_path):
    run_dir = tmp_path / "two"
    result = subprocess.run(trainer_command(token_dir, run_dir, TINY, "--nproc", "2", "--set=data.batch_size=4", "--gns", "--max_steps", "10"),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _noise_rows(run_dir)[-1]["gns_trace"] > 0
