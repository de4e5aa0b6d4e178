"""One writer per output: two `tokenize` or `train-tokenizer` runs to one --out, two trainers
needing one tokenizer cache entry, every process of a run copying its tokenizer. The second
writer waits for the first, then reuses its result or refuses in one line; nothing collides.

Deterministic where it can be: the test itself holds the output's lock (as a first writer
would), starts the real command, sees it wait, puts the first writer's result in place, and
releases. Then the same with real commands started together."""

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.files.lock import hold, lock_path
from pipelines.tokenizer.encode import encode_file, read_record
from pipelines.tokenizer.store import load_tokenizer
from pipelines.tokenizer.train import train_tokenizer
from pipelines.training.data.prepare import SPECIAL_TOKENS, TrainingData, file_key, with_run_tokenizer
from pipelines.training.storage.run_dir import TOKENIZER_DIR, checkpoint_path
from tests.commands import ROOT
from tests.inputs import EOT


@pytest.fixture
def tokenizers(corpus: Path, tmp_path: Path) -> tuple[Path, Path]:
    return train_tokenizer(corpus, 280, [EOT], tmp_path / "tok_a"), train_tokenizer(corpus, 270, [EOT], tmp_path / "tok_b")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_waiting(process: subprocess.Popen, output: Path) -> None:
    line = process.stderr.readline()
    assert line.startswith("waiting for pid ") and line.rstrip().endswith(f"which is writing {output}"), line
    assert process.poll() is None


def test_a_second_tokenize_waits_then_reuses_the_same_result(corpus, tokenizers, tmp_path):
    first_result = encode_file(corpus, tokenizers[0], tmp_path / "made" / "ids.npy")
    out = tmp_path / "ids.npy"
    with hold(out):  # the first writer
        second = start("pipelines.tokenizer.encode", str(corpus), "--tokenizer", str(tokenizers[0]), "--out", str(out))
        wait_until_waiting(second, out.absolute())
        for made in (first_result, first_result.with_name("ids.npy.meta.json")):
            shutil.copy(made, tmp_path / made.name)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert "is up to date" in stdout
    assert np.load(out).tolist() == np.load(first_result).tolist()


def test_a_second_tokenize_waits_then_refuses_a_different_result_in_one_line(corpus, tokenizers, tmp_path):
    out = tmp_path / "ids.npy"
    with hold(out):
        second = start("pipelines.tokenizer.encode", str(corpus), "--tokenizer", str(tokenizers[1]), "--out", str(out))
        wait_until_waiting(second, out.absolute())
        encode_file(corpus, tokenizers[0], tmp_path / "made" / "ids.npy")
        for name in ("ids.npy", "ids.npy.meta.json"):
            shutil.copy(tmp_path / "made" / name, tmp_path / name)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2
    assert stderr.splitlines()[-1] == f"error: --out {out} was written by another process while this one waited for it; rerun to replace it"
    assert read_record(out)["tokenizer"] == str(tokenizers[0].resolve())  # the first writer's result stands


def test_a_second_train_tokenizer_waits_then_refuses_to_replace_the_first_ones(corpus, tokenizers, tmp_path):
    out = tmp_path / "tok"
    with hold(out.absolute()):
        second = start("pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "300", "--special", EOT, "--out", str(out))
        wait_until_waiting(second, out.absolute())
        shutil.copytree(tokenizers[0], out)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2
    assert stderr.splitlines()[-1].endswith("vocab.json already exists; pass --force to replace it")
    assert load_tokenizer(out).fingerprint() == load_tokenizer(tokenizers[0]).fingerprint()


def test_two_tokenize_runs_started_together_both_succeed_with_one_result(corpus, tokenizers, tmp_path):
    out = tmp_path / "ids.npy"
    for _ in range(3):
        out.unlink(missing_ok=True)
        runs = [start("pipelines.tokenizer.encode", str(corpus), "--tokenizer", str(tokenizers[0]), "--out", str(out)) for _ in range(2)]
        results = [run.communicate(timeout=120) + (run.returncode,) for run in runs]
        assert [code for _, _, code in results] == [0, 0], results
        assert np.load(out).tolist() == load_tokenizer(tokenizers[0]).encode(corpus.read_text(encoding="utf-8"))
        assert not lock_path(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == [
            "ids.npy", "ids.npy.meta.json", "in.txt", "tok_a", "tok_b"]


_TRAIN_CACHE_ENTRY = """
import sys
from pathlib import Path
from pipelines.training.data.prepare import _cached_tokenizer
_cached_tokenizer(Path(sys.argv[1]), 300, Path(sys.argv[2]))
"""


def test_two_trainers_needing_one_tokenizer_cache_entry_make_it_once(corpus, tmp_path):
    entry = tmp_path / "cache" / "tokenizers" / f"{corpus.stem}-v300-{file_key(corpus)}"
    builders = [subprocess.Popen([sys.executable, "-c", _TRAIN_CACHE_ENTRY, str(corpus), str(entry)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [builder.communicate(timeout=120) for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0], outputs
    assert sum("training a 300-token" in stdout for stdout, _ in outputs) == 1  # the other waited and reused it
    assert load_tokenizer(entry).special_tokens == SPECIAL_TOKENS
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no lock, no half folder


def _copy_in(source: Path, run_dir: Path, barrier) -> str:
    barrier.wait()
    data = TrainingData(np.zeros(1), np.zeros(1), np.zeros(1), source)
    return with_run_tokenizer(data, run_dir, 0).tokenizer.fingerprint()


def test_every_process_of_a_run_may_copy_its_tokenizer_at_once(tokenizers, tmp_path):
    context = multiprocessing.get_context("fork")
    expected = load_tokenizer(tokenizers[0]).fingerprint()
    for attempt in range(4):
        run_dir = tmp_path / f"run{attempt}"
        run_dir.mkdir()
        barrier = context.Manager().Barrier(3)
        with context.Pool(3) as pool:
            fingerprints = pool.starmap(_copy_in, [(tokenizers[0], run_dir, barrier)] * 3)
        assert fingerprints == [expected] * 3
        assert sorted(p.name for p in run_dir.iterdir()) == [TOKENIZER_DIR]


def test_a_tokenizer_copy_left_by_a_start_that_never_trained_is_replaced_and_a_run_keeps_its_own(tokenizers, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tokenizers[1], run_dir / TOKENIZER_DIR)  # from a start that failed on other data
    data = TrainingData(np.zeros(1), np.zeros(1), np.zeros(1), tokenizers[0])
    assert with_run_tokenizer(data, run_dir, 0).tokenizer.fingerprint() == load_tokenizer(tokenizers[0]).fingerprint()

    checkpoint_path(run_dir).parent.mkdir()
    checkpoint_path(run_dir).write_bytes(b"")  # a run that trained: its copy is its own
    data = TrainingData(np.zeros(1), np.zeros(1), np.zeros(1), tokenizers[1])
    assert with_run_tokenizer(data, run_dir, 0).tokenizer.fingerprint() == load_tokenizer(tokenizers[0]).fingerprint()
    assert json.loads((run_dir / TOKENIZER_DIR / "special_tokens.json").read_text()) == [EOT]
