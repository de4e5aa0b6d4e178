"""Fetching the TinyStories corpus: resumable HTTP downloads into a cache directory."""

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"}


def cache_dir() -> Path:
    """Where downloads, trained tokenizers and encoded tokens go: $LMKIT_CACHE, else ./cache."""
    return Path(os.environ.get("LMKIT_CACHE", "cache")).resolve()


def fetch_tinystories(dest: Path) -> Path:
    """TinyStories-V2 train and valid text in `dest` (downloaded when missing); returns `dest`.

    Offline, fails with the exact files to put where instead."""
    for name in TINYSTORIES_FILES.values():
        target = dest / name
        if target.exists():
            continue
        try:
            download(TINYSTORIES_URL + name, target)
        except (urllib.error.URLError, OSError) as error:
            shared = Path("../shared/data")
            hint = f" For a small local sample: --data {shared}" if shared.is_dir() else ""
            raise FileNotFoundError(
                f"could not download {TINYSTORIES_URL + name} ({error}). Without a network, put "
                f"{TINYSTORIES_FILES['train']} and {TINYSTORIES_FILES['valid']} into {dest}/, or pass "
                f"--data DIR with train/valid text files (e.g. train.txt, valid.txt) or encoded .npy.{hint}"
            ) from error
    return dest


def download(url: str, target: Path, timeout: float = 30.0) -> None:
    """Stream `url` to `target` with a progress bar. A partial `target.part` from an interrupted
    download is continued with an HTTP Range request rather than started over."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if done and response.status != 206:  # the server ignored the range: start over
            done = 0
        total = response.length + done if response.length is not None else None
        with open(partial, "ab" if done else "wb") as out, tqdm(
            total=total, initial=done, unit="B", unit_scale=True, desc=target.name
        ) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    partial.rename(target)
