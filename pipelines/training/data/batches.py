"""Token data for training: memory-mapped token files, random batches, fixed validation windows.

A dataset is one long 1-D array of token ids (documents joined by <|endoftext|>). It is read
through `np.load(mmap_mode="r")`, so only the windows a batch touches are paged in from disk.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from core.errors import UsageError

# Big enough that the per-chunk overhead vanishes, small enough that a scan never holds more than a
# few tens of MB (a 2 GB int16 token file is checked in ~100 chunks).
CHECK_CHUNK = 1 << 24


def open_tokens(path: str | Path) -> np.ndarray:
    """Memory-map a 1-D integer `.npy` token file, with a clear error naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"token file {path} does not exist")
    try:
        tokens = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise UsageError(f"token file {path} is not a readable .npy array: {error}") from error
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise UsageError(f"token file {path} must hold a 1-D integer array, found {tokens.dtype} {tokens.shape}")
    return tokens


def check_tokens(tokens: np.ndarray | str | Path, vocab_size: int, *, name: str | None = None) -> int:
    """Check once, chunk by chunk, that every id lies in [0, vocab_size); returns the token count.

    A token id beyond the embedding table would otherwise surface much later as an index error deep
    inside the model (or, on CUDA, as a device-side assert with no hint of which file is at fault).
    """
    if not isinstance(tokens, np.ndarray):
        name = name or str(tokens)
        tokens = open_tokens(tokens)
    name = name or "token array"
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise UsageError(f"{name} must be a 1-D integer array, found {tokens.dtype} {tokens.shape}")
    for begin in range(0, len(tokens), CHECK_CHUNK):
        chunk = np.asarray(tokens[begin : begin + CHECK_CHUNK])
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            position = begin + int(np.argmax(chunk == bad))
            raise UsageError(
                f"{name} holds token id {bad} at position {position}, outside the vocabulary [0, {vocab_size}) "
                "(was it encoded with a different tokenizer?)"
            )
    return len(tokens)


def get_batch(
    dataset: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` windows with uniformly random starts: inputs x and next-token targets y = x
    shifted by one, both int64 (batch_size, context_length) on `device`.

    Starts come from torch's RNG (`generator`, or the global one when None) so that a run's data
    order is reproducible and can be checkpointed with the rest of its random state.
    """
    starts = torch.randint(0, _num_starts(len(dataset), context_length), (batch_size,), generator=generator)
    return _windows(dataset, starts.numpy(), context_length, device)


def rank_batch(
    dataset: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator,
    *,
    rank: int = 0,
    world: int = 1,
    micro_batches: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of one step's global batch: `micro_batches` x `world` x `batch_size`
    window starts are drawn from `generator` at once, and process `rank` takes, for each
    micro-batch in order, its own `batch_size` rows. The global batch depends only on the generator
    and its size, so a run is the same at any split into processes and micro-batches (and one
    process with one micro-batch draws exactly `get_batch`'s windows)."""
    total = micro_batches * world * batch_size
    starts = torch.randint(0, _num_starts(len(dataset), context_length), (total,), generator=generator)
    mine = starts.view(micro_batches, world, batch_size)[:, rank].reshape(-1)
    return _windows(dataset, mine.numpy(), context_length, device)


def step_generator(key: int, step: int) -> torch.Generator:
    """The generator that draws step `step`'s batch, seeded from (key, step): a run's data order
    is a function of its key alone, reproducible and resumable without saving generator state."""
    return torch.Generator().manual_seed(key << 32 | step)


def eval_starts(num_tokens: int, context_length: int, num_windows: int) -> np.ndarray:
    """Evenly spaced window starts over the whole split: the same windows on every evaluation and in
    every run, so validation losses compare across steps, runs and sweeps without sampling noise."""
    last = _num_starts(num_tokens, context_length) - 1
    num_windows = min(num_windows, last + 1)
    return np.unique(np.linspace(0, last, num_windows).round().astype(np.int64))


def eval_batches(
    dataset: np.ndarray, starts: np.ndarray, batch_size: int, context_length: int, device: str | torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed windows `starts`, in batches of at most `batch_size`."""
    for begin in range(0, len(starts), batch_size):
        yield _windows(dataset, starts[begin : begin + batch_size], context_length, device)


def check_one_window(num_tokens: int, context_length: int, path: str | Path | None = None) -> None:
    """Refuses a split of `num_tokens` too short for one window of `context_length` + 1 tokens,
    naming its file `path` when given."""
    if num_tokens < context_length + 1:
        what = "dataset has" if path is None else f"{path} holds"
        raise UsageError(
            f"{what} {num_tokens} tokens, fewer than context_length + 1 = {context_length + 1}; "
            "use more data or a shorter context"
        )


def _num_starts(num_tokens: int, context_length: int) -> int:
    check_one_window(num_tokens, context_length)
    return num_tokens - context_length


def _windows(
    dataset: np.ndarray, starts: np.ndarray, context_length: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # One fancy-index gather of (batch, context + 1): on a memmap it reads only the touched pages.
    windows = dataset[starts[:, None] + np.arange(context_length + 1)]
    windows = torch.from_numpy(windows.astype(np.int64, copy=False))
    device = torch.device(device)
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously with the previous step's compute.
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
