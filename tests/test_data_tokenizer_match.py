"""Data, tokenizer and checkpoint belong together: open_training_data compares the fingerprints it
can find (token files' sidecars, --data.tokenizer or a tokenizer/ beside the data, the run's own
tokenizer and the checkpoint's record) and refuses a mismatch naming both sides; a resumed run
encodes text with its own tokenizer, never a new one."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.tokenizer.encode import encode_file
from pipelines.tokenizer.store import load_tokenizer
from pipelines.tokenizer.train import train_tokenizer
from pipelines.training.cli import main
from pipelines.training.config.config import TrainConfig, resolve_config
from pipelines.training.data.prepare import open_training_data
from tests.inputs import EOT

FIRST = "Once upon a time there was a cat. The cat liked to play with a ball.\n" + EOT + "\n"
SECOND = "A small dog ran to the river every morning and barked at the ducks.\n" + EOT + "\n"
TINY = {
    "model.vocab_size": 300, "model.context_length": 16, "model.d_model": 32, "model.num_layers": 1,
    "model.num_heads": 2, "data.batch_size": 4, "eval.windows": 4, "sample.count": 0,
}


def text_data(directory: Path, story: str) -> Path:
    directory.mkdir()
    (directory / "train.txt").write_text(story * 40, encoding="utf-8")
    (directory / "valid.txt").write_text(story * 10, encoding="utf-8")
    return directory


def config_for(data: Path, tmp_path: Path, tokenizer: Path | None = None) -> TrainConfig:
    overrides = {**TINY, "data.path": str(data), "run_dir": str(tmp_path / "run")}
    if tokenizer is not None:
        overrides["data.tokenizer"] = str(tokenizer)
    return resolve_config("tinystories", "cpu-small", overrides)


@pytest.fixture
def setup(tmp_path, monkeypatch) -> dict[str, Path]:
    """Two text corpora, a tokenizer trained on each (A on the first, B on the second), and .npy
    splits of the first corpus encoded with A (sidecars recording A)."""
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    first, second = text_data(tmp_path / "first", FIRST), text_data(tmp_path / "second", SECOND)
    tok_a = train_tokenizer(first / "train.txt", 280, [EOT], tmp_path / "tok_a")
    tok_b = train_tokenizer(second / "train.txt", 280, [EOT], tmp_path / "tok_b")
    encoded = tmp_path / "encoded"
    for split in ("train", "valid"):
        encode_file(first / f"{split}.txt", tok_a, encoded / f"{split}.npy")
    return {"first": first, "second": second, "tok_a": tok_a, "tok_b": tok_b, "encoded": encoded}


def fingerprint(directory: Path) -> str:
    return load_tokenizer(directory).fingerprint()


def test_npy_data_read_with_another_tokenizer_is_refused_naming_both(setup, tmp_path):
    a, b = fingerprint(setup["tok_a"]), fingerprint(setup["tok_b"])
    with pytest.raises(ValueError, match=rf"the tokenizer .*train.npy was encoded with \(.*tok_a\) \(fingerprint {a[:12]}\) is not the data's tokenizer .*tok_b \(fingerprint {b[:12]}\)"):
        open_training_data(config_for(setup["encoded"], tmp_path, setup["tok_b"]))

    data = open_training_data(config_for(setup["encoded"], tmp_path, setup["tok_a"]))
    assert data.tokenizer_source == setup["tok_a"]


def test_a_tokenizer_folder_beside_the_data_must_be_the_one_it_was_encoded_with(setup, tmp_path):
    shutil.copytree(setup["tok_b"], setup["encoded"] / "tokenizer")
    with pytest.raises(ValueError, match=r"the tokenizer .*train.npy was encoded with \(.*tok_a\) .* is not the data's tokenizer .*encoded/tokenizer "):
        open_training_data(config_for(setup["encoded"], tmp_path))


def test_resume_on_other_text_encodes_it_with_the_run_tokenizer(setup, tmp_path):
    run_tokenizer = setup["tok_a"]
    config = config_for(setup["second"], tmp_path)
    data = open_training_data(config, run_tokenizer, fingerprint(run_tokenizer))
    expected = load_tokenizer(run_tokenizer).encode((setup["second"] / "train.txt").read_text(encoding="utf-8"))
    assert np.asarray(data.train).tolist() == expected
    assert data.tokenizer_source == run_tokenizer
    assert not (tmp_path / "cache" / "tokenizers").exists()  # no new tokenizer was trained

    fresh = open_training_data(config)  # a new run on the same text trains its own, for comparison
    assert np.asarray(fresh.train).tolist() != expected


def test_resume_with_data_of_another_tokenizer_is_refused(setup, tmp_path):
    run_tokenizer, recorded = setup["tok_b"], fingerprint(setup["tok_b"])
    with pytest.raises(ValueError, match=r"the data's tokenizer .*tok_a .* is not the run's tokenizer .*tok_b"):
        open_training_data(config_for(setup["second"], tmp_path, setup["tok_a"]), run_tokenizer, recorded)
    with pytest.raises(ValueError, match=r"train.npy was encoded with \(.*tok_a\) .* is not the run's tokenizer .*tok_b"):
        open_training_data(config_for(setup["encoded"], tmp_path), run_tokenizer, recorded)


def test_the_run_tokenizer_must_be_the_one_the_checkpoint_records(setup, tmp_path):
    a, b = fingerprint(setup["tok_a"]), fingerprint(setup["tok_b"])
    with pytest.raises(ValueError, match=rf"the run's tokenizer .*tok_a \(fingerprint {a[:12]}\) is not the checkpoint's tokenizer \(fingerprint {b[:12]}\)"):
        open_training_data(config_for(setup["second"], tmp_path), setup["tok_a"], b)
    # A run without its tokenizer folder: the data's tokenizer is held to the checkpoint's record.
    with pytest.raises(ValueError, match=r"the data's tokenizer .*tok_a .* is not the checkpoint's tokenizer"):
        open_training_data(config_for(setup["encoded"], tmp_path, setup["tok_a"]), None, b)
    open_training_data(config_for(setup["encoded"], tmp_path, setup["tok_a"]), None, a)


def test_through_the_command_line_a_mismatch_is_one_line_and_a_resume_keeps_its_tokenizer(setup, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["tinystories", "--preset", "cpu-small", "--run_dir", str(run_dir), *[f"--set={k}={v}" for k, v in TINY.items()]]
    with pytest.raises(SystemExit, match="^error: ") as refused:
        main([*flags, "--max_steps", "2", "--data.path", str(setup["encoded"]), "--data.tokenizer", str(setup["tok_b"])])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "tok_b" in error and "tok_a" in error and len(error.strip().splitlines()) == 1
    assert not run_dir.exists()

    assert main([*flags, "--max_steps", "2", "--data.path", str(setup["encoded"]), "--data.tokenizer", str(setup["tok_a"])]) == 0
    resumed = [*flags, "--max_steps", "4", "--resume", "--data.path", str(setup["second"])]
    with pytest.raises(SystemExit, match="^error: "):
        main([*resumed, "--data.tokenizer", str(setup["tok_b"])])  # the run's tokenizer is A
    assert "tok_b" in capsys.readouterr().err
    assert main(resumed) == 0  # the new text, encoded with the run's own tokenizer
    assert fingerprint(run_dir / "tokenizer") == fingerprint(setup["tok_a"])
