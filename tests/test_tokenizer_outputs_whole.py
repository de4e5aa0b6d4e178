"""`train-tokenizer` and `tokenize` leave their outputs whole or absent, whatever kills them when;
a tokenizer folder that is not whole is refused in one line naming the file; a full disk names the
file. Driven through the real commands in subprocesses (`main(argv)` of each, with a pause
patched in where a deterministic kill point is needed)."""

import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.tokenizer.encode import read_record
from pipelines.tokenizer.store import load_tokenizer
from tests.commands import ROOT, one_line_error
from tests.inputs import EOT, STORY


# Runs a tokenizer command's main(argv) with a pause after a chosen point, announced on stdout,
# so that the test kills it (SIGKILL, as kill -9) exactly there.
_PAUSED = """
import sys, time
from pathlib import Path
from pipelines.tokenizer import encode, train
command, pause_at, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

def pause():
    print("paused", flush=True)
    time.sleep(600)

if pause_at.startswith("after:"):  # after the named file of the tokenizer folder is written
    real_write = Path.write_text
    def write_then_pause(self, *args, **kwargs):
        written = real_write(self, *args, **kwargs)
        if self.name == pause_at[len("after:"):]:
            pause()
        return written
    Path.write_text = write_then_pause
elif pause_at == "mid-ids":  # after the first ids are written into the .npy's temporary
    real_ranges = encode._encoded_ranges
    def ranges_then_pause(*args):
        for number, item in enumerate(real_ranges(*args)):
            yield item
            if number == 0:
                pause()
    encode._encoded_ranges = ranges_then_pause
{"train": train, "encode": encode}[command].main(argv)
"""


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def train_tokenizer(corpus: Path, out: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return run("-m", "pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "280", "--special", EOT, "--out", str(out), *extra, **kwargs)


def tokenize(corpus: Path, tokenizer: Path, out: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return run("-m", "pipelines.tokenizer.encode", str(corpus), "--tokenizer", str(tokenizer), "--out", str(out), *extra, **kwargs)


def killed_at(command: str, pause_at: str, *argv: str) -> int:
    """Run the command until it pauses at `pause_at`, kill -9 it there; its pid."""
    child = subprocess.Popen([sys.executable, "-c", _PAUSED, command, pause_at, *argv], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline() == "paused\n", "the command ended before its pause point"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    return child.pid


@pytest.fixture
def tokenizer_dir(corpus: Path, tmp_path: Path) -> Path:
    assert train_tokenizer(corpus, tmp_path / "tok").returncode == 0
    return tmp_path / "tok"


@pytest.mark.parametrize("pause_at", ["after:vocab.json", "after:merges.txt"])
def test_train_tokenizer_killed_while_saving_leaves_no_folder_and_a_rerun_needs_no_force(corpus, tmp_path, pause_at):
    out = tmp_path / "tok"
    killed_at("train", pause_at, str(corpus), "--model.vocab_size", "280", "--special", EOT, "--out", str(out))
    assert not out.exists()  # nothing for tokenize to take for a tokenizer (it would lack its special tokens)
    assert "does not exist" in one_line_error(tokenize(corpus, out, tmp_path / "ids.npy"))

    assert train_tokenizer(corpus, out).returncode == 0  # no "already exists; pass --force"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "tok"]  # the killed writer's debris is gone
    tokenizer = load_tokenizer(out)
    assert tokenizer.special_tokens == [EOT] and len(tokenizer.encode(EOT)) == 1


def test_train_tokenizer_killed_while_replacing_keeps_the_old_tokenizer(corpus, tokenizer_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in tokenizer_dir.iterdir()}
    killed_at("train", "after:special_tokens.json", str(corpus), "--model.vocab_size", "270", "--special", EOT, "--out", str(tokenizer_dir), "--force")
    assert {p.name: p.read_bytes() for p in tokenizer_dir.iterdir()} == before
    assert train_tokenizer(corpus, tokenizer_dir, "--force").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "tok"]


def test_tokenize_killed_mid_write_keeps_the_previous_output_and_a_rerun_finishes_cleanly(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ids.npy"
    killed_at("encode", "mid-ids", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--workers", "1")
    assert not out.exists() and read_record(out) is None
    assert tokenize(corpus, tokenizer_dir, out).returncode == 0  # no --force: nothing of anyone's was there

    other = tmp_path / "other"
    assert train_tokenizer(corpus, other, "--model.vocab_size", "270").returncode == 0
    before = out.read_bytes(), (tmp_path / "ids.npy.meta.json").read_bytes()
    killed_at("encode", "mid-ids", str(corpus), "--tokenizer", str(other), "--out", str(out), "--workers", "1")
    assert (out.read_bytes(), (tmp_path / "ids.npy.meta.json").read_bytes()) == before  # the last good pair
    assert tokenize(corpus, other, out).returncode == 0
    assert np.load(out).tolist() == load_tokenizer(other).encode(corpus.read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "ids.npy.meta.json", "in.txt", "other", "tok"]


@pytest.mark.slow
def test_kills_at_random_moments_never_leave_a_partial_output(corpus, tmp_path):
    corpus.write_text((STORY + EOT + "\n") * 3000, encoding="utf-8")
    out, ids = tmp_path / "tok", tmp_path / "ids.npy"
    rng = random.Random(0)
    for attempt in range(12):
        command = (["-m", "pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "400", "--special", EOT, "--out", str(out), "--force"]
                   if attempt % 2 == 0 or not out.exists() else
                   ["-m", "pipelines.tokenizer.encode", str(corpus), "--tokenizer", str(out), "--out", str(ids), "--force"])
        child = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if out.exists():
            load_tokenizer(out)  # whole, or not there
        if ids.exists():
            assert len(np.load(ids)) == read_record(ids)["num_tokens"]
    assert train_tokenizer(corpus, out, "--force").returncode == 0
    assert tokenize(corpus, out, ids, "--force").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "ids.npy.meta.json", "in.txt", "tok"]


def test_a_tokenizer_folder_that_is_not_whole_is_refused_naming_the_file(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ids.npy"
    (tokenizer_dir / "special_tokens.json").unlink()  # the half folder: <|endoftext|> would be 8 ordinary tokens
    assert one_line_error(tokenize(corpus, tokenizer_dir, out)) == (
        f"error: tokenizer folder {tokenizer_dir} is incomplete: special_tokens.json missing")
    (tokenizer_dir / "special_tokens.json").write_text(json.dumps([EOT]))

    vocab = tokenizer_dir / "vocab.json"
    text = vocab.read_text(encoding="utf-8")
    vocab.write_text(text[: len(text) // 2], encoding="utf-8")  # truncated
    assert one_line_error(tokenize(corpus, tokenizer_dir, out)).startswith(f"error: {vocab} is not a valid vocab.json: JSONDecodeError")

    entries = json.loads(text)
    del entries[max(entries, key=entries.get)]  # the last merge's token: the files disagree
    vocab.write_text(json.dumps(entries), encoding="utf-8")
    message = one_line_error(tokenize(corpus, tokenizer_dir, out))
    assert message.startswith(f"error: tokenizer folder {tokenizer_dir} does not hold one tokenizer: merge ")
    assert not out.exists()


def test_duplicate_empty_or_single_byte_special_tokens_and_a_tiny_vocabulary_are_refused_before_training(corpus, tmp_path):
    out = tmp_path / "tok"
    result = train_tokenizer(corpus, out, "--special", EOT)  # the fixture's EOT, given twice
    assert one_line_error(result) == f"error: --special '{EOT}' is given twice; give each special token once"
    result = run("-m", "pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "280", "--special", "a", "--special", "a", "--out", str(out))
    assert "'a' is given twice" in one_line_error(result)
    result = run("-m", "pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "280", "--special", "a", "--out", str(out))
    assert "'a' is a single byte" in one_line_error(result)
    result = run("-m", "pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "280", "--special", "", "--out", str(out))
    assert "a special token cannot be empty" in one_line_error(result)
    result = run("-m", "pipelines.tokenizer.train", str(corpus), "--model.vocab_size", "256", "--special", EOT, "--out", str(out))
    assert "--model.vocab_size 256: the 256 bytes and 1 special token(s) need at least 257" in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_an_out_folder_holding_other_files_is_refused_before_training(corpus, tmp_path):
    (tmp_path / "notes.md").write_text("mine")
    result = train_tokenizer(corpus, tmp_path)
    assert "holds other files (in.txt, notes.md)" in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "notes.md"]


def _file_size_limit(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_during_tokenize_names_the_file_and_leaves_the_previous_output(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ids.npy"
    # RLIMIT_FSIZE: a write past 1,000 bytes fails with EFBIG ("File too large"), as on a full disk.
    result = tokenize(corpus, tokenizer_dir, out, "--workers", "1", preexec_fn=_file_size_limit(1000))
    assert one_line_error(result) == f"error: cannot write {out}: File too large"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "tok"]
