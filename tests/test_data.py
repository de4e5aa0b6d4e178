"""Batches of token windows from memory-mapped token files, and the fixed validation windows."""

import numpy as np
import pytest
import torch

from core.errors import UsageError
from pipelines.training.data.batches import check_tokens, eval_batches, eval_starts, get_batch, open_tokens

from .inputs import check_batches


def test_get_batch_shapes_shift_and_uniform_starts():
    dataset, generator = np.arange(0, 100), torch.Generator().manual_seed(0)
    check_batches(lambda: get_batch(dataset, 32, 7, "cpu", generator=generator), dataset, context_length=7, iterations=1000)


def test_get_batch_on_an_unavailable_device_raises():
    with pytest.raises((RuntimeError, AssertionError)):
        get_batch(np.arange(100), 4, 7, "cuda:99", generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint32, np.int64])
def test_get_batch_reads_memmapped_npy_of_any_integer_dtype(tmp_path, dtype):
    path = tmp_path / "tokens.npy"
    np.save(path, (np.arange(500) % 300).astype(dtype))
    tokens = open_tokens(path)
    assert isinstance(tokens, np.memmap)
    x, y = get_batch(tokens, 8, 16, "cpu", generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.int64
    assert torch.equal((x + 1) % 300, y)


def test_get_batch_is_reproducible_with_a_generator():
    data = np.arange(1000)
    a = get_batch(data, 4, 8, "cpu", generator=torch.Generator().manual_seed(3))
    b = get_batch(data, 4, 8, "cpu", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_data_shorter_than_a_window_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than context_length"):
        get_batch(np.arange(8), 2, 8, "cpu")
    get_batch(np.arange(9), 2, 8, "cpu")  # exactly one window fits


def test_check_tokens_names_the_file_id_and_position(tmp_path):
    path = tmp_path / "train.npy"
    tokens = np.arange(50, dtype=np.uint16)
    np.save(path, tokens)
    assert check_tokens(path, vocab_size=50) == 50
    with pytest.raises(ValueError, match=r"train\.npy holds token id 49 at position 49, outside the vocabulary \[0, 40\)"):
        check_tokens(path, vocab_size=40)
    with pytest.raises(ValueError, match="token id -1 at position 2"):
        check_tokens(np.array([0, 1, -1, 5]), vocab_size=10)


def test_check_tokens_scans_every_chunk(monkeypatch):
    monkeypatch.setattr("pipelines.training.data.batches.CHECK_CHUNK", 7)
    tokens = np.zeros(100, dtype=np.int32)
    tokens[93] = 12
    with pytest.raises(ValueError, match="token id 12 at position 93"):
        check_tokens(tokens, vocab_size=10)


def test_open_tokens_rejects_what_is_not_a_token_array(tmp_path):
    with pytest.raises(UsageError, match="missing.npy"):
        open_tokens(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="text.npy is not a readable .npy"):
        open_tokens(tmp_path / "text.npy")
    np.save(tmp_path / "floats.npy", np.ones(10))
    with pytest.raises(ValueError, match="1-D integer"):
        open_tokens(tmp_path / "floats.npy")


def test_eval_windows_are_fixed_evenly_spaced_and_cover_the_split():
    starts = eval_starts(num_tokens=1000, context_length=10, num_windows=5)
    assert starts.tolist() == [0, 247, 494, 742, 989]
    assert np.array_equal(starts, eval_starts(1000, 10, 5))
    assert len(eval_starts(20, 10, 100)) == 10  # no more windows than distinct starts


def test_eval_batches_yield_every_window_once():
    data = np.arange(1000)
    starts = eval_starts(1000, 10, 7)
    batches = list(eval_batches(data, starts, batch_size=3, context_length=10, device="cpu"))
    assert [len(x) for x, _ in batches] == [3, 3, 1]
    firsts = torch.cat([x[:, 0] for x, _ in batches])
    assert firsts.tolist() == starts.tolist()
    assert all(torch.equal(x + 1, y) for x, y in batches)
