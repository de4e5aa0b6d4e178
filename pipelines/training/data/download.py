"""Fetching the training corpora (TinyStories, OpenWebText): resumable HTTP downloads into a cache directory.

A CPU-sized run needs a slice of the 2.1 GB train file, not all of it: `fetch_tinystories(dest,
train_mb=64)` fetches the valid file and the first 64 MiB of train by HTTP range request, cut after
its last `<|endoftext|>` so no story is truncated. Each size has its own folder under `dest`
(`full/`, `first64MB/`) and the prefix its own name (`TinyStoriesV2-GPT4-train.first64MB.txt`), so
a prefix is never taken for the full file nor one size for another, and `find_split` in
pipelines/training/data/prepare.py sees exactly one train and one valid text in the folder returned.

OpenWebText (`fetch_owt`, the handout's owt_train.txt and owt_valid.txt) is served gzipped: the
.gz is downloaded the same resumable way into `gz/` and unpacked into the size folder, then
removed. A prefix is cut from the first `train_mb` MiB of the *compressed* file (text compresses
about 3x, so they hold more than `train_mb` MiB of text), unpacked as far as it goes and cut
after its last `<|endoftext|>` within the first `train_mb` MiB: the same file as cutting the
unpacked text. `fetch_dataset(name, ...)` picks the fetcher of a dataset by its name.
"""

import http.client
import math
import os
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from core.errors import UsageError
from pipelines.files.atomic import fsync_path
from pipelines.files.lock import hold
from pipelines.training.data.dataset_names import local_sample_hint

TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"}
# The handout's OpenWebText sample (the assignment repository's README), each file served as NAME.gz.
OWT_URL = "https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main/"
OWT_FILES = {"train": "owt_train.txt", "valid": "owt_valid.txt"}
GZ_DIR = "gz"  # under a dataset's folder: the compressed downloads, until unpacked
DOCUMENT_END = b"<|endoftext|>"
MB = 1 << 20  # train_mb counts MiB
CHUNK = 1 << 20
# A laptop's connection drops; each reconnection continues where the stream broke, and a bounded
# number of them keeps a server that always breaks from looping forever.
ATTEMPTS = 5
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def cache_dir() -> Path:
    """Where downloads, trained tokenizers and encoded tokens go: $LMKIT_CACHE, else ./cache."""
    return Path(os.environ.get("LMKIT_CACHE", "cache")).resolve()


def size_folder(dest: Path, train_mb: int | None = None) -> Path:
    """The folder under `dest` for one train size of a dataset: `full/` or `first{train_mb}MB/`."""
    return dest / ("full" if train_mb is None else f"first{train_mb}MB")


def train_name(train_mb: int | None = None) -> str:
    """The train file's name: the upstream name for the full file, `...-train.first64MB.txt` for a prefix."""
    return prefix_name(TINYSTORIES_FILES["train"], train_mb)


def fetch_tinystories(dest: Path, train_mb: int | None = None) -> Path:
    """The folder holding TinyStories-V2 valid in full and train in full (`train_mb=None`) or its
    first `train_mb` MiB cut after a story; what is missing is fetched. A complete full copy already
    under `dest` is used without the network. Offline, fails naming the files to put where."""

    def fetch(source: str, target: Path, max_bytes: int | None) -> None:
        url = TINYSTORIES_URL + source
        try:
            # A full file is fetched as download(url, target): callers that stub download keep working.
            download(url, target) if max_bytes is None else download(url, target, max_bytes=max_bytes)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise UsageError(_offline_message(url, error, dest, train_mb)) from error

    return _fetch_missing(dest, train_mb, TINYSTORIES_FILES, fetch)


def fetch_owt(dest: Path, train_mb: int | None = None) -> Path:
    """The folder holding OpenWebText valid in full and train in full (`train_mb=None`) or its
    first `train_mb` MiB cut after a document, as `fetch_tinystories` does for TinyStories; each
    file is downloaded gzipped (resumably) and unpacked. Unpacked full files already under `dest`
    are used without the network. Offline, fails naming the files to put where."""

    def fetch(source: str, target: Path, max_bytes: int | None) -> None:
        url = OWT_URL + source + ".gz"
        gz_dir = dest / GZ_DIR
        full_gz = gz_dir / (source + ".gz")
        # A prefix needs only as many compressed bytes as text bytes, unless the whole .gz is here.
        gz = full_gz if max_bytes is None or full_gz.exists() else gz_dir / prefix_name(source, train_mb).replace(".txt", ".txt.gz")
        try:
            if gz is full_gz:
                download(url, gz)
            else:
                _produce(gz, None, lambda partial: _fetch(url, partial, max_bytes, 30.0))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise UsageError(_offline_message(url, error, dest, train_mb, OWT_FILES, unpacked=True)) from error
        _produce(target, max_bytes, lambda partial: _gunzip(gz, partial, max_bytes, whole=max_bytes is None))
        if gz is not full_gz:
            gz.unlink(missing_ok=True)  # the compressed prefix served its one purpose
        elif max_bytes is None:
            gz.unlink(missing_ok=True)  # unpacked in full: the text is what the trainer reads

    return _fetch_missing(dest, train_mb, OWT_FILES, fetch)


def _fetch_missing(dest: Path, train_mb: int | None, files: dict[str, str], fetch: Callable[[str, Path, int | None], None]) -> Path:
    """The folder of one dataset's train file (whole, or its first `train_mb` MiB) and valid file
    under `dest`. A file already there is kept; a missing one is cut from a full copy under `dest`
    when there is one, else fetched by `fetch(upstream name, target, bytes wanted or None)`."""
    _check_train_mb(train_mb)
    if train_mb is None and all((dest / name).is_file() for name in files.values()):
        return dest  # the layout before per-size folders: both full files straight in `dest`
    folder = size_folder(dest, train_mb)
    wanted = [  # (name here, upstream name, bytes of it wanted)
        (prefix_name(files["train"], train_mb), files["train"], None if train_mb is None else train_mb * MB),
        (files["valid"], files["valid"], None),
    ]
    for name, source, max_bytes in wanted:
        target = folder / name
        if target.exists():
            continue
        if (local := _full_copy(dest, source)) is not None:
            _produce(target, max_bytes, lambda partial: _copy(local, partial, max_bytes))
        else:
            fetch(source, target, max_bytes)
    return folder


FETCHERS: dict[str, Callable[[Path, int | None], Path]] = {"tinystories": fetch_tinystories, "owt": fetch_owt}


def fetch_dataset(name: str, dest: Path, train_mb: int | None = None) -> Path:
    """The folder of dataset `name`'s train and valid text under `dest`, fetched when missing."""
    if name not in FETCHERS:
        raise UsageError(f"no download known for dataset {name!r} (known: {sorted(FETCHERS)}); pass --data.path DIR")
    return FETCHERS[name](dest, train_mb)


def prefix_name(full: str, train_mb: int | None) -> str:
    """`full` for the whole file, `NAME.first64MB.txt` for its first 64 MiB."""
    return full if train_mb is None else full.replace(".txt", f".first{train_mb}MB.txt")


def _check_train_mb(train_mb: int | None) -> None:
    if train_mb is not None and (isinstance(train_mb, bool) or not isinstance(train_mb, int) or train_mb <= 0):
        raise UsageError(f"train_mb must be a positive whole number of MiB or None, not {train_mb!r}")


def _gunzip(source: Path, partial: Path, max_bytes: int | None, whole: bool) -> None:
    """Unpack the gzip file `source` (several members allowed) into `partial`, at most `max_bytes`
    bytes of it. With `whole`, a file that ends inside a gzip member is an error (and `source` is
    removed so that the next call fetches it again); otherwise `source` may be a prefix of one,
    unpacked as far as it goes."""
    left = math.inf if max_bytes is None else max_bytes
    unpacker, inside = zlib.decompressobj(wbits=31), False  # inside: the current member has begun
    try:
        with open(source, "rb") as packed, open(partial, "wb") as out:
            while left > 0 and (chunk := packed.read(CHUNK)):
                while chunk and left > 0:
                    text = unpacker.decompress(chunk)
                    inside = True
                    text = text[: int(min(left, len(text)))]
                    out.write(text)
                    left -= len(text)
                    chunk = b""
                    if unpacker.eof:  # a member ends; what follows it starts the next one
                        chunk, unpacker, inside = unpacker.unused_data, zlib.decompressobj(wbits=31), False
    except zlib.error as error:
        source.unlink(missing_ok=True)
        raise UsageError(f"{source} is not a valid gzip file ({error}); removed, so the next run fetches it again") from None
    if whole and inside:
        source.unlink(missing_ok=True)
        raise UsageError(f"{source} ends inside its gzip stream; removed, so the next run fetches it again")


def download(url: str, target: Path, *, max_bytes: int | None = None, timeout: float = 30.0) -> None:
    """Stream `url` to `target`, or only its first `max_bytes` bytes cut after the last
    `<|endoftext|>` in them. Bytes go to `target.part`, which an interrupted download leaves and the
    next connection (or call) continues with an HTTP Range request; `target` appears atomically,
    only when complete, and an existing `target` is never touched nor fetched again."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise UsageError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
    _produce(target, max_bytes, lambda partial: _fetch(url, partial, max_bytes, timeout))


def _produce(target: Path, max_bytes: int | None, fill: Callable[[Path], None]) -> None:
    """Runs `fill(part)` and the finalisation under the lock on `target` (pipelines/files/lock.py):
    two processes fetching one file never write the same part, and the second finds the file done.
    The part is not a temporary: it is kept across runs, for the next one to continue."""
    if target.exists():
        return
    partial = target.with_name(target.name + ".part")
    with hold(target):
        if target.exists():
            return
        fill(partial)
        _finalise(partial, target, max_bytes)


def _finalise(partial: Path, target: Path, max_bytes: int | None) -> None:
    if max_bytes is not None:
        cut = _last_document_end(partial)
        if cut is None:
            raise UsageError(
                f"the first {max_bytes} bytes for {target.name} hold no {DOCUMENT_END.decode()}: ask for more"
            )
        os.truncate(partial, cut)  # a part cut short is still a true prefix: a rerun resumes and cuts the same
    fsync_path(partial)  # the rename must not become visible before the bytes are on disk
    os.replace(partial, target)
    fsync_path(target.parent)  # nor be lost after it


def _last_document_end(path: Path) -> int | None:
    """The offset just past the last DOCUMENT_END in `path`, read backwards a chunk at a time."""
    overlap = len(DOCUMENT_END) - 1  # a marker straddling two chunks is found in the later read
    with open(path, "rb") as handle:
        end = path.stat().st_size
        while end > 0:
            start = max(0, end - CHUNK)
            handle.seek(start)
            at = handle.read(end - start + overlap).rfind(DOCUMENT_END)
            if at >= 0:
                return start + at + len(DOCUMENT_END)
            end = start
    return None


def _full_copy(dest: Path, name: str) -> Path | None:
    """A complete full file `name` already under `dest` (in it or a size folder): only complete
    files carry the upstream name, prefixes and parts have their own."""
    found = [path for path in [dest / name, *sorted(dest.glob(f"*/{name}"))] if path.is_file()]
    return found[0] if found else None


def _copy(source: Path, partial: Path, max_bytes: int | None) -> None:
    left = math.inf if max_bytes is None else max_bytes
    with open(source, "rb") as src, open(partial, "wb") as out:
        while chunk := src.read(int(min(CHUNK, left))):
            out.write(chunk)
            left -= len(chunk)


def _fetch(url: str, partial: Path, max_bytes: int | None, timeout: float) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _fetch_once(url, partial, max_bytes, timeout)
        except (ConnectionError, TimeoutError, http.client.IncompleteRead) as error:
            if attempt == ATTEMPTS:
                raise
            tqdm.write(f"{url}: {error}; reconnecting")


def _fetch_once(url: str, partial: Path, max_bytes: int | None, timeout: float) -> None:
    """One request continuing `partial`; ConnectionError when the stream stops short."""
    done = partial.stat().st_size if partial.exists() else 0
    if max_bytes is not None and done >= max_bytes:
        return  # the whole prefix is there already (only the cut is missing)
    wanted = f"bytes={done}-" + ("" if max_bytes is None else str(max_bytes - 1))
    request = urllib.request.Request(url, headers={"Range": wanted} if done or max_bytes else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code != 416 or not done:
            raise
        if _content_range(error.headers)[2] == done:
            return  # nothing lies past `done`: the part is the whole file
        partial.unlink()  # the part is longer than the file, or unverifiable: start over
        raise ConnectionError(f"{partial.name} does not match {url}; starting over") from error
    with response:
        if response.status == 206:
            start, last, _ = _content_range(response.headers)
            if start is None or start not in (0, done):
                partial.unlink()
                answered = response.headers.get("Content-Range")
                raise ConnectionError(f"{url} answered another range ({answered}); starting over")
            expected = last + 1
        else:  # the server ignored the range and sends the whole file: start over
            start, expected = 0, response.length
        if expected is not None and max_bytes is not None:
            expected = min(expected, max_bytes)
        _stream(response, partial, start, expected, max_bytes)


def _stream(response, partial: Path, start: int, expected: int | None, max_bytes: int | None) -> None:
    """Writes the body from offset `start` until `expected` (else max_bytes, else end of stream)."""
    limit, done = (expected if expected is not None else max_bytes), start
    with open(partial, "ab" if start else "wb") as out, tqdm(
        total=expected, initial=done, unit="B", unit_scale=True, desc=partial.name.removesuffix(".part")
    ) as bar:
        while limit is None or done < limit:
            chunk = response.read(CHUNK if limit is None else min(CHUNK, limit - done))
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            bar.update(len(chunk))
    # http.client returns b"" rather than raising when a connection closes before Content-Length.
    if expected is not None and done < expected:
        raise ConnectionError(f"the stream stopped at byte {done} of {expected}")


def _content_range(headers) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a Content-Range header, None for what it leaves out or lacks."""
    match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if match is None:
        return None, None, None
    first, last, total = (None if value in (None, "*") else int(value) for value in match.groups())
    return first, last, total


def _offline_message(url: str, error: BaseException, dest: Path, train_mb: int | None,
                     files: dict[str, str] = TINYSTORIES_FILES, unpacked: bool = False) -> str:
    """One line: what failed, and which files (`files`' train and valid) to put where instead."""
    hint = local_sample_hint(files["train"])
    full, valid, folder = files["train"], files["valid"], size_folder(dest, train_mb)
    packed = " (unpacked from their .gz)" if unpacked else ""
    if train_mb is None:
        what = f"put {full} and {valid}{packed} into {folder}/"
    else:
        what = (
            f"put {prefix_name(full, train_mb)} (the first {train_mb} MiB of {full}, cut after its last "
            f"{DOCUMENT_END.decode()}) and {valid}{packed} into {folder}/, "
            f"or {full} into {size_folder(dest)}/ to cut it from"
        )
    return (
        f"could not download {url} ({error}). Without a network, {what}, or pass --data.path DIR with "
        f"train/valid text files (e.g. train.txt, valid.txt) or encoded .npy.{hint}"
    )
