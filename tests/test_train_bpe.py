"""BPE training: the reference result, the handout's example, tie-breaking, special tokens, the
parallel streamed pre-tokenization, errors, and the CLI."""

import json
import random
import time
from collections import Counter

import pytest

from conftest import shared_path
from core.errors import UsageError
from core.bpe import initial_vocab, iter_merges, train_bpe_from_counts
from core.bytes_unicode import from_printable
from core.pretokenize import count_pretokens
from pipelines.tokenizer.files import cut_points, read_pieces
from pipelines.tokenizer.store import load_tokenizer
from pipelines.tokenizer.train import main, train_bpe, train_tokenizer
from tests.inputs import EOT



def reference_merges() -> list[tuple[bytes, bytes]]:
    lines = shared_path("fixtures/train-bpe-reference-merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(map(from_printable, line.split(" "))) for line in lines]


def reference_vocab() -> dict[int, bytes]:
    vocab = json.loads(shared_path("fixtures/train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    return {i: from_printable(token) for token, i in vocab.items()}


def stories(n: int, seed: int = 0) -> list[str]:
    """Small made-up documents: repetitive enough for merges, varied enough for ties and Unicode."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "mat", "they'll", "naïve", "café", "über", "42", "3.14", "🙂", "!!", "—"]
    return [
        "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 4)))
        for _ in range(n)
    ]


def test_corpus_en_matches_the_reference_within_the_suites_time():
    path = shared_path("fixtures/corpus.en")
    started = time.perf_counter()
    vocab, merges = train_bpe(path, 500, [EOT])
    elapsed = time.perf_counter() - started
    assert merges == reference_merges()
    assert vocab == reference_vocab()  # same ids too, not only the same sets
    assert elapsed < 1.5


def test_handout_example():
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    vocab, merges = train_bpe_from_counts(counts, 257 + 6, [EOT])
    assert [(a.decode(), b.decode()) for a, b in merges] == [
        ("s", "t"), ("e", "st"), ("o", "w"), ("l", "ow"), ("w", "est"), ("n", "e")
    ]
    assert vocab[0] == EOT.encode() and {vocab[i] for i in range(1, 257)} == {bytes([b]) for b in range(256)}
    assert [vocab[i] for i in range(257, 263)] == [b"st", b"est", b"ow", b"low", b"west", b"ne"]


def test_ties_go_to_the_greater_pair_of_byte_strings():
    # b"!" sorts above b" " as bytes, but below it in the vocabulary's id order.
    _, merges = train_bpe_from_counts({b" x": 2, b"!x": 2}, 257, [])
    assert merges == [(b"!", b"x")]
    # The handout's case: ("BA", "A") beats ("B", "ZZ"), ("A", "C") and ("A", "B").
    counts = {b"BA": 10, b"ZZ": 10, b"AB": 3, b"AC": 3, b"BAA": 3, b"BZZ": 3}
    _, merges = train_bpe_from_counts(counts, 256 + 4, [])
    assert merges[2:] == [(b"BA", b"A"), (b"B", b"ZZ")]


def test_training_stops_when_no_pair_is_left(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("ab ab", encoding="utf-8")
    vocab, merges = train_bpe(path, 1000, [EOT])
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 257 + 2


def test_special_tokens_split_documents_and_are_never_learned(tmp_path):
    docs = stories(300)
    path = tmp_path / "docs.txt"
    path.write_text(EOT.join(docs), encoding="utf-8")
    vocab, merges = train_bpe(path, 600, [EOT])
    per_document = Counter()
    for doc in docs:
        per_document.update(count_pretokens(doc, None))
    _, expected = train_bpe_from_counts({w.encode(): c for w, c in per_document.items()}, 600, [EOT])
    assert merges == expected
    assert not any(b"<|" in token or b"|>" in token for token in list(vocab.values())[1:])


@pytest.mark.parametrize("special", [True, False], ids=["special-token-cuts", "newline-cuts"])
def test_parallel_streamed_counting_equals_one_pass(tmp_path, special):
    separator = f"\n{EOT}\n" if special else "\n"
    text = separator.join(stories(2000, seed=1))
    path = tmp_path / "docs.txt"
    path.write_text(text, encoding="utf-8")
    specials = [EOT] if special else []

    cuts = cut_points(path, 8, specials)
    assert len(cuts) == 9 and cuts == sorted(set(cuts))
    pieces = [piece for a, b in zip(cuts, cuts[1:]) for piece, _ in read_pieces(path, a, b, specials, 4096)]
    assert len(pieces) > len(text) // 4096
    assert "".join(pieces) == text

    serial = train_bpe(path, 700, specials, num_workers=1)
    assert train_bpe(path, 700, specials, num_workers=2, piece_bytes=4096) == serial


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match="missing.txt does not exist"):
        train_bpe(tmp_path / "missing.txt", 500, [])
    with pytest.raises(UsageError, match="is not a regular file"):
        train_bpe(tmp_path, 500, [])
    good = tmp_path / "good.txt"
    good.write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab_size 256 is too small.*need 257"):
        train_bpe(good, 256, [EOT])
    with pytest.raises(ValueError, match="non-empty"):
        train_bpe(good, 300, [""])
    bad = tmp_path / "bad.txt"
    bad.write_bytes("héllo".encode() + b"\xff world")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 text: byte 0xff at offset 6"):
        train_bpe(bad, 300, [])


def test_cli_trains_saves_and_reports(tmp_path, capsys):
    corpus = shared_path("fixtures/corpus.en")
    out = tmp_path / "tok"
    main([str(corpus), "--model.vocab_size", "500", "--special", EOT, "--out", str(out)])
    report = capsys.readouterr().out
    assert "vocab size   500 (243 merges)" in report
    assert "wall time" in report and "peak memory" in report and "longest" in report
    loaded = load_tokenizer(out)
    assert loaded.merges == reference_merges() and loaded.vocab == reference_vocab()
    with pytest.raises(SystemExit, match="error: .*does not exist"):
        main([str(tmp_path / "nope.txt"), "--model.vocab_size", "500", "--out", str(out)])


def test_train_tokenizer_returns_a_loadable_directory(tmp_path):
    directory = train_tokenizer(shared_path("fixtures/corpus.en"), 500, [EOT], tmp_path / "tok")
    assert load_tokenizer(directory).merges == reference_merges()


def test_iter_merges_yields_pairs_and_leaves_the_vocabulary_alone():
    vocab = initial_vocab([], 300)
    before = dict(vocab)
    assert list(iter_merges({b"abab": 3}, vocab)) == [(b"a", b"b"), (b"ab", b"ab")]
    assert vocab == before
