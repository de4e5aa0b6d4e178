"""A run's dataset and its data agree, or the run refuses in one line; the offline hint of each
dataset points at a command that gives that dataset's own local sample."""

import numpy as np
import pytest

from core.errors import UsageError
from pipelines.training.cli import main
from pipelines.training.data.dataset_names import check_dataset_matches, dataset_named_by, local_sample_hint

TINY = ["--model.d_model", "16", "--model.num_layers", "1", "--model.num_heads", "2", "--model.context_length", "8",
        "--model.vocab_size", "300", "--data.batch_size", "2", "--max_steps", "1", "--sample.count", "0"]


@pytest.mark.parametrize("name, dataset", [
    ("tinystories_train.txt", "tinystories"), ("TinyStoriesV2-GPT4-valid.txt", "tinystories"), ("owt_train.txt", "owt"),
    ("openwebtext.valid.npy", "owt"), ("train.txt", None), ("valid.npy", None), ("howto_train.txt", None),
])
def test_a_file_name_names_its_dataset_or_none(name, dataset):
    assert dataset_named_by(name) == dataset


def test_only_files_named_for_another_dataset_are_refused(tmp_path):
    check_dataset_matches("owt", tmp_path / "owt_train.txt", tmp_path / "valid.txt", None)
    check_dataset_matches("tinystories", tmp_path / "train.txt", tmp_path / "valid.txt")
    with pytest.raises(UsageError, match=r"tinystories_valid.txt is named for the tinystories dataset .* dataset is owt"):
        check_dataset_matches("owt", tmp_path / "train.txt", tmp_path / "tinystories_valid.txt")


@pytest.mark.parametrize("dataset, files", [
    ("owt", ("tinystories_train.npy", "tinystories_valid.npy")), ("tinystories", ("owt_train.npy", "owt_valid.npy")),
])
def test_a_run_on_the_other_datasets_files_is_one_line_and_leaves_no_run_directory(dataset, files, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in files:
        np.save(data / name, np.arange(200, dtype=np.uint16) % 256)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        main([dataset, "--preset", "cpu-small", "--data.path", str(data), "--run_dir", str(run_dir), *TINY])
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"this run's dataset is {dataset}" in error
    assert not run_dir.exists()


def test_each_datasets_offline_hint_gives_its_own_sample(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for name in ("tinystories_train.txt", "owt_sample.txt"):
        (tmp_path / "data" / name).write_text("x")
    monkeypatch.setenv("LMKIT_SHARED", str(tmp_path))
    assert local_sample_hint("TinyStoriesV2-GPT4-train.txt") == f" For a small local sample: --data.path {tmp_path / 'data'}"
    owt = local_sample_hint("owt_train.txt")
    assert f"just split-text {tmp_path / 'data' / 'owt_sample.txt'} --out cache/owt-sample" in owt
    assert owt.endswith("then --data.path cache/owt-sample")
    monkeypatch.setenv("LMKIT_SHARED", str(tmp_path / "elsewhere"))
    assert local_sample_hint("owt_train.txt") == ""
