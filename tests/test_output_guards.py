"""The tokenizer commands never destroy a file the user did not ask to overwrite: an output is
never an input, `--out` is checked before any work, and what is already there is replaced only
with --force (or when the command's own sidecar shows it wrote it). Driven through the command
lines (`main(argv)`, and one real subprocess)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.tokenizer import encode, train
from pipelines.tokenizer.store import load_tokenizer
from tests.commands import ROOT
from tests.inputs import EOT


@pytest.fixture
def tokenizer_dir(corpus: Path, tmp_path: Path) -> Path:
    train.main([str(corpus), "--model.vocab_size", "280", "--special", EOT, "--out", str(tmp_path / "tok")])
    return tmp_path / "tok"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def refuse_training(monkeypatch) -> None:
    """Make any training fail loudly: a refusal must come before it."""
    def trained(*args, **kwargs):
        raise AssertionError("training started before --out was checked")
    monkeypatch.setattr(train, "train_bpe", trained)


def test_encoding_onto_its_own_corpus_is_refused_in_one_line(corpus, tokenizer_dir):
    text = corpus.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.tokenizer.encode", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(corpus)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert corpus.read_bytes() == text


def test_an_output_that_is_the_corpus_by_another_name_is_refused(corpus, tokenizer_dir, tmp_path):
    text = corpus.read_bytes()
    os.link(corpus, tmp_path / "hard.npy")
    (tmp_path / "soft.npy").symlink_to(corpus)
    for name in ("hard.npy", "soft.npy"):
        with pytest.raises(SystemExit, match=f"error: --out: .*{name} is the input .*in.txt"):
            encode.main([str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / name), "--force"])
    assert corpus.read_bytes() == text


def test_encoding_into_the_tokenizer_folder_is_refused_and_the_tokenizer_still_loads(corpus, tokenizer_dir):
    before = snapshot(tokenizer_dir)
    for out in ("vocab.npy", "merges.npy", "ids.npy"):
        with pytest.raises(SystemExit, match=f"error: --out: .*{out} lies inside the input .*tok"):
            encode.main([str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tokenizer_dir / out), "--force"])
    assert snapshot(tokenizer_dir) == before
    load_tokenizer(tokenizer_dir)


def test_encode_refuses_a_user_file_without_force_and_replaces_it_with_force(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ids.npy"
    out.write_bytes(b"the user's own file")
    command = [str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    with pytest.raises(SystemExit, match=r"error: --out: .*ids.npy already exists; pass --force"):
        encode.main(command)
    assert out.read_bytes() == b"the user's own file"

    encode.main(command + ["--force"])
    ids = load_tokenizer(tokenizer_dir).encode(corpus.read_text(encoding="utf-8"))
    assert np.load(out).tolist() == ids


def test_encode_refuses_to_replace_a_file_where_its_sidecar_goes(corpus, tokenizer_dir, tmp_path):
    sidecar = tmp_path / "ids.npy.meta.json"
    sidecar.write_text('{"mine": true}', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"error: --out: .*ids.npy.meta.json already exists; pass --force"):
        encode.main([str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ids.npy")])
    assert sidecar.read_text(encoding="utf-8") == '{"mine": true}'
    assert not (tmp_path / "ids.npy").exists()


def test_encode_replaces_its_own_output_without_force(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ids.npy"
    encode.main([str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(out)])
    other = tmp_path / "other"
    train.main([str(corpus), "--model.vocab_size", "270", "--special", EOT, "--out", str(other)])
    encode.main([str(corpus), "--tokenizer", str(other), "--out", str(out)])  # its own sidecar proves it wrote out
    assert np.load(out).tolist() == load_tokenizer(other).encode(corpus.read_text(encoding="utf-8"))
    assert encode.read_record(out)["tokenizer"] == str(other.resolve())


def test_encode_wants_an_npy_name_in_a_folder(corpus, tokenizer_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"error: --out .*ids.txt: the name must end in .npy"):
        encode.main([str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ids.txt")])
    with pytest.raises(SystemExit, match=r"error: --out .*in.txt/ids.npy: .*in.txt is a file, not a folder"):
        encode.main([str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(corpus / "ids.npy")])


def test_training_onto_the_corpus_or_under_a_file_is_refused_before_training(corpus, tmp_path, monkeypatch):
    text = corpus.read_bytes()
    refuse_training(monkeypatch)
    with pytest.raises(SystemExit, match=r"error: --out .*in.txt/vocab.json: .*in.txt is a file, not a folder"):
        train.main([str(corpus), "--model.vocab_size", "300", "--out", str(corpus)])
    with pytest.raises(SystemExit, match=r"error: --out .*in.txt is a file, not a folder"):
        train.main([str(corpus), "--model.vocab_size", "300", "--out", str(corpus / "deeper" / "tok")])
    assert corpus.read_bytes() == text

    named_like_an_output = corpus.rename(tmp_path / "vocab.json")
    with pytest.raises(SystemExit, match=r"error: --out: .*vocab.json is the input"):
        train.main([str(named_like_an_output), "--model.vocab_size", "300", "--out", str(tmp_path), "--force"])
    assert named_like_an_output.read_bytes() == text


def test_an_existing_tokenizer_is_kept_without_force_and_replaced_with_it(corpus, tokenizer_dir, monkeypatch):
    before = snapshot(tokenizer_dir)
    with monkeypatch.context() as patched:
        refuse_training(patched)
        with pytest.raises(SystemExit, match=r"error: --out: .*vocab.json already exists; pass --force"):
            train.main([str(corpus), "--model.vocab_size", "270", "--special", EOT, "--out", str(tokenizer_dir)])
    assert snapshot(tokenizer_dir) == before

    train.main([str(corpus), "--model.vocab_size", "270", "--special", EOT, "--out", str(tokenizer_dir), "--force"])
    assert len(load_tokenizer(tokenizer_dir).vocab) == 270
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == ["merges.txt", "special_tokens.json", "vocab.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused_before_training(corpus, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    refuse_training(monkeypatch)
    try:
        with pytest.raises(SystemExit, match=r"error: --out .*: cannot write in .*locked"):
            train.main([str(corpus), "--model.vocab_size", "300", "--out", str(locked / "tok")])
    finally:
        locked.chmod(0o700)
