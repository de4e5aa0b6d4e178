"""Encoding a text file to .npy: identical to `encode` of the whole text, in order across workers,
the sidecar, skipping when up to date, atomic output, and the CLI."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from core.tokenizer import Tokenizer
from pipelines.tokenizer.encode import encode_file, main
from pipelines.tokenizer.store import load_tokenizer
from pipelines.tokenizer.train import train_tokenizer
from tests.inputs import EOT


def make_text(documents: int, separator: str, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["once", "upon", "a", "time", "there", "was", "a", "fox", "it's", "über", "café", "2024", "🦊", "!?", "  "]
    return separator.join(
        "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 15))) for _ in range(rng.randint(1, 3)))
        for _ in range(documents)
    )


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    """A text of 1500 documents separated by EOT lines, and a 400-token tokenizer trained on it."""
    directory = tmp_path_factory.mktemp("corpus")
    path = directory / "docs.txt"
    path.write_text(make_text(1500, f"\n{EOT}\n"), encoding="utf-8")
    tokenizer_dir = train_tokenizer(path, 400, [EOT], directory / "tokenizer")
    return path, tokenizer_dir


def test_output_is_the_encoding_of_the_whole_text_with_its_sidecar(corpus_and_tokenizer, tmp_path):
    path, tokenizer_dir = corpus_and_tokenizer
    tokenizer = load_tokenizer(tokenizer_dir)
    out = encode_file(path, tokenizer_dir, tmp_path / "ids.npy")
    ids = np.load(out, mmap_mode="r")
    assert ids.dtype == np.uint16
    expected = tokenizer.encode(path.read_text(encoding="utf-8"))
    assert ids.tolist() == expected

    sidecar = json.loads((tmp_path / "ids.npy.meta.json").read_text(encoding="utf-8"))
    assert sidecar["tokenizer_sha256"] == tokenizer.fingerprint()
    assert sidecar["num_tokens"] == len(expected)
    assert sidecar["dtype"] == "uint16"
    assert sidecar["source"]["size"] == sidecar["source_bytes"] == path.stat().st_size
    assert sidecar["source"]["path"] == str(path.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "ids.npy.meta.json"]  # no temporary left


@pytest.mark.parametrize("separator", [f"\n{EOT}\n", EOT, "\n"], ids=["eot-lines", "eot-inline", "no-special"])
def test_workers_write_the_same_ids_in_file_order(corpus_and_tokenizer, tmp_path, separator):
    _, tokenizer_dir = corpus_and_tokenizer
    tokenizer = load_tokenizer(tokenizer_dir)
    path = tmp_path / "text.txt"
    path.write_text(make_text(1500, separator, seed=3), encoding="utf-8")
    parallel = encode_file(path, tokenizer, tmp_path / "parallel.npy", workers=2, piece_bytes=2048)
    assert np.load(parallel).tolist() == tokenizer.encode(path.read_text(encoding="utf-8"))


def test_rerun_with_the_same_inputs_does_nothing(corpus_and_tokenizer, tmp_path, capsys):
    path, tokenizer_dir = corpus_and_tokenizer
    out = encode_file(path, tokenizer_dir, tmp_path / "ids.npy")
    written = out.stat().st_mtime_ns
    encode_file(path, tokenizer_dir, out, progress=True)
    assert "up to date" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == written

    other = load_tokenizer(tokenizer_dir)
    other = Tokenizer(other.vocab, other.merges[:-10], other.special_tokens)
    encode_file(path, other, out)
    assert np.load(out).tolist() == other.encode(path.read_text(encoding="utf-8"))


def test_a_changed_source_is_encoded_again(corpus_and_tokenizer, tmp_path):
    _, tokenizer_dir = corpus_and_tokenizer
    path = tmp_path / "text.txt"
    path.write_text("first version", encoding="utf-8")
    out = encode_file(path, tokenizer_dir, tmp_path / "ids.npy")
    path.write_text("second version, longer", encoding="utf-8")
    encode_file(path, tokenizer_dir, out)
    assert np.load(out).tolist() == load_tokenizer(tokenizer_dir).encode("second version, longer")


def test_large_vocabularies_are_stored_as_uint32(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({70_000: b"hi"})
    tokenizer = Tokenizer(vocab, [(b"h", b"i")])
    path = tmp_path / "text.txt"
    path.write_text("hi there", encoding="utf-8")
    ids = np.load(encode_file(path, tokenizer, tmp_path / "ids.npy"))
    assert ids.dtype == np.uint32 and ids[0] == 70_000


def test_cli_reports_and_fails_clearly(corpus_and_tokenizer, tmp_path, capsys):
    path, tokenizer_dir = corpus_and_tokenizer
    out = tmp_path / "ids.npy"
    main([str(path), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--workers", "2"])
    report = capsys.readouterr().out
    assert f"{len(np.load(out))} tokens (uint16)" in report and "MB/s" in report
    with pytest.raises(SystemExit, match="error: .*missing.txt does not exist"):
        main([str(tmp_path / "missing.txt"), "--tokenizer", str(tokenizer_dir), "--out", str(out)])
