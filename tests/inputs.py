"""Seeded inputs shared by the domain tests and tests/test_adapters.py.

Each draw has its own generator: a fresh CPU generator seeded with s gives the numbers the global
RNG gives after torch.manual_seed(s), so the snapshot inputs are the reference suite's."""

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from conftest import shared_path
from core.config import ModelConfig
from core.tree import tree_map

EOT = "<|endoftext|>"
STORY = "Once upon a time there was a fox. The fox liked to run in the big green wood.\n"  # a text's unit in tests


def randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def randint(seed: int, high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def snapshot_inputs() -> tuple[torch.Tensor, ...]:
    """q, k, v, x and the attention mask of ../shared/fixtures/snapshots (batch 4, d_k 64)."""
    q, k, v, x = randn(1, 4, 12, 64), randn(2, 4, 16, 64), randn(3, 4, 16, 64), randn(4, 4, 12, 64)
    mask = randn(5, 4, 12, 16) > 0.5
    return q, k, v, x, mask


def snapshot(name: str) -> np.ndarray:
    return np.load(shared_path(f"fixtures/snapshots/{name}.npz"))["array"]


def small_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48, rope_theta=1000.0)
    return ModelConfig(**{**base, **overrides})


def model_tree(generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict:
    """A small pytree shaped like the model's: matrices, and 1-D RMSNorm-like gains near 1."""
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)  # same draws in any dtype

    layers = [{"attn": {"q_proj": {"weight": rand(8, 8)}}, "ln1": {"weight": 1 + 0.1 * rand(8)}} for _ in range(2)]
    return {"token_embeddings": {"weight": rand(11, 8)}, "layers": layers, "ln_final": {"weight": 1 + 0.1 * rand(8)}}


def like(tree, generator: torch.Generator, scale: float = 1.0):
    return tree_map(lambda p: (scale * torch.randn(p.shape, generator=generator, dtype=torch.float64)).to(p.dtype), tree)


def check_batches(draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], dataset: np.ndarray, context_length: int, iterations: int) -> None:
    """`iterations` batches from `draw` are int64 windows of `dataset` with targets shifted by one,
    and their starts are uniform over every possible start (each count within 5 standard
    deviations of its binomial mean)."""
    starts: Counter[int] = Counter()
    batch_size = None
    for _ in range(iterations):
        x, y = draw()
        batch_size = len(x)
        assert x.shape == y.shape == (batch_size, context_length)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x + 1, y)
        starts.update(x[:, 0].tolist())
    possible = len(dataset) - context_length
    assert min(starts) == 0 and max(starts) == possible - 1
    expected = iterations * batch_size / possible
    assert all(abs(starts[s] - expected) < 5 * np.sqrt(expected) for s in range(possible))
