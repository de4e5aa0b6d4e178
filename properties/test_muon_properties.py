"""Properties of Muon's Newton-Schulz orthogonalisation and of partition, checked with Hypothesis."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.optim import EmptyState, GradientTransformation, newton_schulz, partition

A, B, C = 3.4445, -4.7750, 2.0315
# The band, measured on the scalar map below over a 2e6-point grid of [0, 1]: its maximum is
# 1.2024, and its minimum over [2e-3, 1] is 0.6818 (it first reaches 0.5 near 1.07e-3 and 0.68 near
# 1.5e-3: below that, 5 steps of growth ~3.4445x each are not enough). The slack covers float32.
LOW, HIGH, SMALLEST_INPUT = 0.68, 1.21, 2e-3

dims = st.integers(1, 48)
seeds = st.integers(0, 2**16)


def quintic_five_times(s: torch.Tensor) -> torch.Tensor:
    """What 5 Newton-Schulz steps do to one singular value s of X / ||X||_F (they act on each alone)."""
    for _ in range(5):
        s = A * s + B * s**3 + C * s**5
    return s


def with_singular_values(rows: int, cols: int, values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U diag(values) V^T with U, V random with orthonormal columns."""
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator, dtype=torch.float64))
    return u @ torch.diag(values) @ v.T


@settings(max_examples=40, deadline=None)
@given(rows=dims, cols=dims, spread=st.floats(1.0, 10.0), scale=st.floats(1e-3, 1e3), seed=seeds)
def test_orthogonalised_singular_values_lie_in_the_quintic_band(rows, cols, spread, scale, seed):
    # Singular values within a factor `spread` <= 10 of each other: divided by the Frobenius norm
    # the smallest is at least 1 / (10 sqrt(48)) ~ 0.014 >= SMALLEST_INPUT, so all must land in the band.
    generator = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    values = scale * (1 + (spread - 1) * torch.rand(k, generator=generator, dtype=torch.float64))
    x = with_singular_values(rows, cols, values, generator).float()
    out = torch.linalg.svdvals(newton_schulz(x).double())
    assert LOW <= out.min() and out.max() <= HIGH, (out.min(), out.max())


@settings(max_examples=40, deadline=None)
@given(rows=dims, cols=dims, seed=seeds)
def test_newton_schulz_maps_each_singular_value_by_the_quintic(rows, cols, seed):
    # Gaussian matrices, square ones included, whose smallest singular values can be near 0: the
    # output's singular values are the quintic's images of the input's (normalised) ones, and those
    # past SMALLEST_INPUT are in the band, while none exceeds its top.
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    normalised = torch.linalg.svdvals(x) / (torch.linalg.matrix_norm(x) + 1e-7)
    out = torch.linalg.svdvals(newton_schulz(x, dtype=torch.float64))
    expected = quintic_five_times(normalised)
    torch.testing.assert_close(out.sort().values, expected.sort().values, rtol=0, atol=1e-9)
    assert out.max() <= HIGH
    assert (expected[normalised >= SMALLEST_INPUT] >= LOW).all()


def _tagging(tag: float) -> GradientTransformation:
    """Adds `tag` to each update: the output says which transformation each leaf went through."""

    def update(updates, state, params=None, *, donate=False):
        return [u + tag for u in updates], state

    return GradientTransformation(lambda params: EmptyState(), update)


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.sampled_from("abc"), min_size=1, max_size=12), nested=st.booleans())
def test_partition_routes_every_leaf_exactly_once(labels, nested):
    leaves = [torch.zeros(i % 3 + 1) for i in range(len(labels))]
    tree, label_tree = (({"x": leaves[:1], "y": leaves[1:]}, {"x": labels[:1], "y": labels[1:]})
                        if nested else (leaves, labels))
    tags = {"a": 1.0, "b": 10.0, "c": 100.0}  # sums of distinct tags would show a leaf routed twice
    optimizer = partition({name: _tagging(tag) for name, tag in tags.items()}, label_tree)
    updates, state = optimizer.update(tree, optimizer.init(tree))
    out = updates["x"] + updates["y"] if nested else updates
    assert [float(u[0]) for u in out] == [tags[label] for label in labels]
    assert set(state.inner_states) == set(tags)
