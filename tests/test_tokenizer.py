"""The Tokenizer: agreement with tiktoken's GPT-2 and HuggingFace `tokenizers`, special tokens,
streaming, decoding, and the GPT-2 file format."""

import inspect
import random
import tracemalloc
from functools import cache
from itertools import islice, repeat

import pytest

from conftest import shared_path
from core.tokenizer import Tokenizer, format_merges, parse_merges
from pipelines.tokenizer.store import load_tokenizer, save_tokenizer
from pipelines.tokenizer.train import train_bpe
from tests.inputs import EOT

FIXTURE_TEXTS = ["tinystories_sample.txt", "address.txt", "german.txt", "corpus.en"]


def gpt2(special_tokens: list[str] | None = None) -> Tokenizer:
    return Tokenizer(*gpt2_files(), special_tokens)


@cache
def gpt2_files() -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """GPT-2's vocabulary and merges, read once: each test builds its own Tokenizer (which copies them)."""
    read = Tokenizer.from_files(shared_path("fixtures/gpt2_vocab.json"), shared_path("fixtures/gpt2_merges.txt"))
    return read.vocab, read.merges


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return gpt2([EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    cache = shared_path("tiktoken-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("gpt2")


def fixture_text(name: str) -> str:
    return shared_path(f"fixtures/{name}").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", FIXTURE_TEXTS)
def test_fixture_texts_encode_as_tiktoken_and_round_trip(ours, tiktoken_gpt2, name):
    text = fixture_text(name)
    ids = ours.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert ours.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    ["", "s", "🙃", " ", "\n\n \n", "Héllò hôw are ü? 🙃", "it's they'll we've I'M 12345 abc!!?", "a  b   \tc\r\n"],
)
def test_short_texts_encode_as_tiktoken_and_round_trip(ours, tiktoken_gpt2, text):
    ids = ours.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert ours.decode(ids) == text


def test_special_token_is_one_id_and_never_merged_with_neighbours(ours, tiktoken_gpt2):
    text = f"Héllò hôw {EOT}{EOT} are ü?{EOT}🙃"
    ids = ours.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert ids.count(50256) == 3
    assert ours.decode(ids) == text


def test_without_special_tokens_the_marker_is_ordinary_text(tiktoken_gpt2):
    plain = gpt2()
    text = f"one{EOT}two"
    assert plain.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert 50256 not in plain.encode(text)


def test_overlapping_special_tokens_match_longest_first():
    double = EOT + EOT
    tokenizer = gpt2([EOT, double])
    ids = tokenizer.encode(f"Hello, how {double} are you?{EOT}")
    double_id = tokenizer.encode(double)
    assert len(double_id) == 1 and double_id != [50256]
    assert ids.count(double_id[0]) == 1 and ids.count(50256) == 1
    assert tokenizer.decode(ids) == f"Hello, how {double} are you?{EOT}"
    # Three in a row: the longest match is taken first, from the left.
    assert tokenizer.encode(EOT * 3) == [double_id[0], 50256]


def test_handout_encoding_example():
    vocab = {0: b" ", 1: b"a", 2: b"c", 3: b"e", 4: b"h", 5: b"t", 6: b"th", 7: b" c", 8: b" a", 9: b"the", 10: b" at"}
    merges = [(b"t", b"h"), (b" ", b"c"), (b" ", b"a"), (b"th", b"e"), (b" a", b"t")]
    tokenizer = Tokenizer(vocab, merges)
    assert tokenizer.encode("the cat ate") == [9, 7, 1, 5, 10, 3]
    with pytest.raises(ValueError, match="0x7a"):
        tokenizer.encode("zeta")


def test_absent_special_tokens_get_new_ids():
    vocab = {i: bytes([i]) for i in range(256)}
    tokenizer = Tokenizer(vocab, [], ["<|x|>", "<|y|>"])
    assert tokenizer.vocab[256] == b"<|x|>" and tokenizer.vocab[257] == b"<|y|>"
    assert tokenizer.encode("a<|y|>b<|x|>") == [ord("a"), 257, ord("b"), 256]
    with pytest.raises(ValueError, match="non-empty"):
        Tokenizer(vocab, [], [""])


def test_merges_must_refer_to_vocabulary_tokens():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="merge 0"):
        Tokenizer(vocab, [(b"a", b"b")])


@pytest.mark.parametrize("chunk_chars", [1 << 16, 7])
def test_encode_iterable_over_a_file_handle_matches_encode(ours, chunk_chars):
    path = shared_path("fixtures/tinystories_sample.txt")
    with open(path, encoding="utf-8") as file:
        streamed = ours.encode_iterable(file, chunk_chars=chunk_chars)
        assert inspect.isgenerator(streamed)
        ids = list(streamed)
    assert ids == ours.encode(path.read_text(encoding="utf-8"))


def test_encode_iterable_is_lazy_on_an_endless_stream(ours):
    line = f"Once upon a time, there was a cat.{EOT}\n"
    expected = ours.encode(line * 3)
    endless = ours.encode_iterable(repeat(line), chunk_chars=100)
    assert list(islice(endless, len(expected))) == expected


def test_encode_iterable_memory_stays_flat_while_the_text_grows():
    vocab, merges = train_bpe(shared_path("fixtures/corpus.en"), 500, [EOT])
    tokenizer = Tokenizer(vocab, merges, [EOT])

    def lines():  # about 0.6 MB of text, made a line at a time
        rng = random.Random(0)
        words = "the quick brown fox jumps over lazy dog it's naïve 🦊 42 !!".split()
        for i in range(10_000):
            yield " ".join(rng.choices(words, k=12)) + (EOT if i % 7 == 0 else "\n")

    text_bytes = sum(len(line.encode()) for line in lines())
    tracemalloc.start()
    try:
        count = sum(1 for _ in tokenizer.encode_iterable(lines(), chunk_chars=4096))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count > 50_000
    assert peak < text_bytes / 4


def test_decode_replaces_malformed_utf8(ours):
    assert ours.decode([ours.encode("é")[0]]) == "é"
    byte_ff = {token: i for i, token in ours.vocab.items()}[b"\xff"]
    assert ours.decode([ours.encode("a")[0], byte_ff]) == "a\ufffd"


def test_decode_names_an_unknown_id(ours):
    with pytest.raises(ValueError, match="token id 99999"):
        ours.decode([15, 99999])


def test_save_and_load_round_trip_every_byte_value(tmp_path):
    # Every byte, tokens of whitespace and invalid UTF-8, and a first merge whose line would look
    # like merges.txt's "#version" header if the header were not there.
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b"#version:"
    merges = [(b"#version:", b"x"), (b" ", b"\n"), (b"\xff", b"\x00"), (b" \n", b"\xff\x00"), (b"\xc4", b"\xa0")]
    for left, right in merges:
        vocab[len(vocab)] = left + right
    tokenizer = Tokenizer(vocab, merges, [EOT, "<|a b|>"])
    directory = save_tokenizer(tokenizer, tmp_path / "tok")
    assert (directory / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n#version: x\n")
    loaded = load_tokenizer(directory)
    assert loaded.vocab == tokenizer.vocab
    assert loaded.merges == tokenizer.merges
    assert loaded.special_tokens == tokenizer.special_tokens
    assert loaded.fingerprint() == tokenizer.fingerprint()
    text = "a \n\xff<|a b|> #version:x"
    assert loaded.encode(text) == tokenizer.encode(text)


def test_merges_text_round_trips_and_bad_lines_name_their_place():
    merges = [(b" ", b"\n"), (b"\xff", b"\x00"), (b"\x85", b"\xe2\x80\xa8")]  # NEL and U+2028 bytes
    assert parse_merges(format_merges(merges)) == merges
    assert parse_merges("a b\r\nc d\r\n") == [(b"a", b"b"), (b"c", b"d")]
    with pytest.raises(ValueError, match=r"m\.txt:3: expected two tokens separated by one space, got 'a b c'"):
        parse_merges("#version: 0.2\na b\na b c\n", source="m.txt")


def test_fingerprint_changes_with_the_merges(ours):
    fewer = Tokenizer(ours.vocab, ours.merges[:-1], ours.special_tokens)
    assert fewer.fingerprint() != ours.fingerprint()
    assert gpt2([EOT]).fingerprint() == ours.fingerprint()


def test_saved_tokenizer_loads_into_hf_tokenizers_with_the_same_ids(tmp_path):
    hf = pytest.importorskip("tokenizers")
    vocab, merges = train_bpe(shared_path("fixtures/corpus.en"), 1000, [EOT])
    ours = Tokenizer(vocab, merges, [EOT])
    directory = save_tokenizer(ours, tmp_path / "tok")

    theirs = hf.Tokenizer(hf.models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    theirs.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    theirs.decoder = hf.decoders.ByteLevel()
    for name in FIXTURE_TEXTS:
        text = fixture_text(name).replace(EOT, "")
        ids = ours.encode(text)
        assert theirs.encode(text).ids == ids, name
        assert theirs.decode(ids) == text
