"""Encode a text file into a .npy of token ids, in parallel, streamed to disk, with a JSON sidecar.

    python -m pipelines.tokenizer.encode INPUT --tokenizer DIR --out FILE.npy [--workers N] [--force]

The file is split into byte ranges at safe cuts (pipelines/tokenizer/files.py); workers encode the
ranges and the ids are appended to the output in file order, so the result is exactly
`tokenizer.encode(whole text)` while no process holds more than a range. The .npy is uint16 when
every id fits, else uint32, and opens with `np.load(path, mmap_mode="r")`.

The sidecar FILE.npy.meta.json records what the ids came from (tokenizer fingerprint, source path,
size and mtime); when it matches, a rerun does nothing. Both files appear atomically: written under
a temporary name, then renamed (pipelines/files/atomic.py), the .npy first, its record after. While
it writes, the command holds a lock on FILE.npy (pipelines/files/lock.py): a second `tokenize` to
the same FILE.npy waits for the first, then reuses its result when it is what it would have
written, or refuses in one line.

The outputs are checked before any work (pipelines/tokenizer/outputs.py): neither may be the text
or lie inside the tokenizer's folder, and a file already there is replaced only with --force, or
when the sidecar shows this command wrote it: re-encoding its own output loses no one's data.
"""

import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.errors import UsageError
from core.tokenizer import Tokenizer
from pipelines.files.atomic import open_atomic, remove_stale_temporaries, write_atomic
from pipelines.files.lock import hold
from pipelines.command import command
from pipelines.flags import CommandParser, processes
from pipelines.tokenizer.files import PIECE_BYTES, SERIAL_BELOW, check_text_file, cut_points, default_workers, read_pieces
from pipelines.tokenizer.outputs import check_outputs
from pipelines.tokenizer.store import load_tokenizer

# The .npy header written for a 1-D array pads its shape field so that its length (128 bytes) does
# not depend on the number of elements: reserve it, stream the ids after it, fill it in at the end.
_HEADER_BYTES = 128
SIDECAR_SUFFIX = ".meta.json"


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    if len(buffer.getvalue()) != _HEADER_BYTES:
        raise RuntimeError(f"this numpy writes a {len(buffer.getvalue())}-byte .npy header, not {_HEADER_BYTES}")
    return buffer.getvalue()


# Each worker process gets the tokenizer once, when it starts, rather than with every task.
_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_range(task: tuple[Path, int, int, np.dtype, int]) -> tuple[np.ndarray, int]:
    """The ids of one byte range of the file, and the range's length in bytes."""
    path, start, end, dtype, piece_bytes = task
    ids: list[int] = []
    for text, _ in read_pieces(path, start, end, _worker_tokenizer.special_tokens, piece_bytes):
        ids += _worker_tokenizer.encode(text)
    return np.array(ids, dtype=dtype), end - start


def _source_record(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def sidecar_path(out: Path) -> Path:
    """Where the record of `out` goes: its whole name plus .meta.json (ids.npy.meta.json), a name
    that only this command makes; `ids.json` could be anything, a tokenizer's vocab.json included."""
    return out.with_name(out.name + SIDECAR_SUFFIX)


def read_record(out: Path) -> dict | None:
    """What the sidecar of `out` records (tokenizer_sha256, dtype, num_tokens, source, ...), or None
    when there is no sidecar this command wrote."""
    try:
        record = json.loads(sidecar_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fields = {"tokenizer_sha256": str, "dtype": str, "num_tokens": int, "source": dict}
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in fields.items()):
        return None
    return record


def _whole(out: Path, record: dict) -> bool:
    """The .npy is as long as its record says: a file replaced or cut short since is not."""
    try:
        return out.stat().st_size == _HEADER_BYTES + record["num_tokens"] * np.dtype(record["dtype"]).itemsize
    except (OSError, TypeError):
        return False


def _check_outputs(out: Path, inputs: list[Path], record: dict | None, force: bool) -> None:
    """The .npy and its sidecar may be written: see check_outputs. Files this command made, as
    their sidecar shows, are its own to replace; anything else there needs `force`."""
    if out.suffix != ".npy":
        raise UsageError(f"--out {out}: the name must end in .npy")
    made_here = record is not None and (not os.path.lexists(out) or _whole(out, record))
    check_outputs([out, sidecar_path(out)], inputs, "--out", replace=force or made_here)


def encode_file(
    input_path: str | os.PathLike,
    tokenizer: Tokenizer | str | os.PathLike,
    out_path: str | os.PathLike,
    workers: int | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    piece_bytes: int = PIECE_BYTES,
) -> Path:
    """Encode the UTF-8 file `input_path` into the .npy `out_path` (sidecar: sidecar_path).

    `tokenizer`: a Tokenizer or a directory it was saved to. `workers`: encoding processes; by
    default one per CPU, or just this process for files under 4 MiB. Outputs are checked first: a
    file there that this function did not write is replaced only with `force`. Does nothing when
    the sidecar shows the output is already there for the same tokenizer and source file.
    """
    path = check_text_file(input_path)
    out = Path(out_path)
    tokenizer_dir = None if isinstance(tokenizer, Tokenizer) else Path(tokenizer)
    recorded = read_record(out)
    _check_outputs(out, [path] + ([tokenizer_dir] if tokenizer_dir else []), recorded, force)
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    dtype = np.dtype(np.uint16 if max(tokenizer.vocab) < 2**16 else np.uint32)
    expected = {"tokenizer_sha256": tokenizer.fingerprint(), "dtype": dtype.name, "source": _source_record(path)}
    with hold(out, announce=progress) as lock:
        current = read_record(out) if lock.waited else recorded
        if current is not None and _whole(out, current) and all(current.get(k) == v for k, v in expected.items()):
            if progress:
                print(f"{out} is up to date with {path} and this tokenizer: nothing to do")
            return out
        if current != recorded:
            raise UsageError(f"--out {out} was written by another process while this one waited for it; rerun to replace it")
        for name in (out.name, sidecar_path(out).name):
            remove_stale_temporaries(out.parent, of=name)  # what a killed writer left
        size = expected["source"]["size"]
        workers = workers or (1 if size < SERIAL_BELOW else default_workers())
        try:
            count = _write_ids(path, tokenizer, out, dtype, workers, progress, piece_bytes)
        except UsageError:
            raise
        except ValueError as error:  # the text uses a byte this tokenizer has no token for
            raise UsageError(f"{path} cannot be encoded with this tokenizer: {error}") from None
        record = {
            **expected, "tokenizer": str(tokenizer_dir.resolve()) if tokenizer_dir else None,
            "num_tokens": count, "source_bytes": size, "bytes_per_token": size / max(count, 1),
        }
        write_atomic(sidecar_path(out), json.dumps(record, indent=2) + "\n")
    return out


def _write_ids(
    path: Path, tokenizer: Tokenizer, out: Path, dtype: np.dtype, workers: int, progress: bool, piece_bytes: int
) -> int:
    """Stream the ids of the file into `out`, written atomically; the count."""
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    try:
        with open_atomic(out) as file:
            file.write(bytes(_HEADER_BYTES))
            count = 0
            for ids, length in _encoded_ranges(path, tokenizer, dtype, workers, piece_bytes):
                file.write(ids.tobytes())
                count += len(ids)
                bar.update(length)
            file.seek(0)
            file.write(_npy_header(dtype, count))
    finally:
        bar.close()
    return count


def _encoded_ranges(
    path: Path, tokenizer: Tokenizer, dtype: np.dtype, workers: int, piece_bytes: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(ids, bytes read) of the file's pieces, in file order: here, or over `workers` processes."""
    size = path.stat().st_size
    if workers == 1:
        for text, length in read_pieces(path, 0, size, tokenizer.special_tokens, piece_bytes):
            yield np.array(tokenizer.encode(text), dtype=dtype), length
        return
    cuts = cut_points(path, max(workers * 4, -(-size // piece_bytes)), tokenizer.special_tokens)
    tasks = [(path, a, b, dtype, piece_bytes) for a, b in zip(cuts, cuts[1:])]
    with Pool(workers, initializer=_start_worker, initargs=(tokenizer,)) as pool:
        yield from pool.imap(_encode_range, tasks)  # imap keeps file order


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m pipelines.tokenizer.encode", description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path, help="UTF-8 text to encode")
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by train_tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="output .npy (its sidecar FILE.npy.meta.json goes beside it)")
    parser.add_argument("--workers", type=processes(), default=None, help="encoding processes (default: per file size and CPUs)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out this command did not write")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started_at, started = time.time(), time.perf_counter()
    out = encode_file(args.input, args.tokenizer, args.out, args.workers, force=args.force, progress=True)
    elapsed = time.perf_counter() - started
    sidecar = sidecar_path(out)
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    print(f"{out}: {record['num_tokens']} tokens ({record['dtype']}), {record['bytes_per_token']:.2f} bytes/token")
    if sidecar.stat().st_mtime >= started_at:  # written by this run, not a skip
        megabytes = record["source_bytes"] / 1e6
        print(f"  {megabytes:.1f} MB in {elapsed:.2f} s ({megabytes / elapsed:.2f} MB/s)")


if __name__ == "__main__":
    sys.exit(main())
