"""The exported tokenizer.json, loaded by Hugging Face `tokenizers`, encodes every text to our ids
and decodes them back to our text: its ByteLevel pre-tokenizer cuts text where our GPT-2 pattern
does, and its added tokens are cut out as our special tokens are (the longest where they overlap)."""

import json
from collections import Counter
from functools import cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import shared_path
from core.bpe import train_bpe_from_counts
from core.pretokenize import PRETOKEN_RE
from core.tokenizer import Tokenizer
from pipelines.export.tokenizer_files import tokenizer_json

hf = pytest.importorskip("tokenizers")

EOT = "<|endoftext|>"
SPECIALS = [EOT, EOT + EOT]  # overlapping: the longer must win
CORPUS = "Once upon a time, Lily's cat ran 12 laps! Été — 東京 😀\n\n  It's done.\t" * 3

# Every branch of the pattern (contractions, letters, digits, punctuation, each kind of space),
# marks and astral characters, and parts of the special tokens, besides arbitrary text.
_pieces = st.sampled_from(
    [*"'sdmtlvre aZé1٣½.!—\n\t\r\u00a0\u3000\u0301\u2028\u0085😀<|>", "'ll", "'ve", "  ", "\n\n", EOT, "<|endoftext", "text|>"]
)
texts = st.one_of(
    st.text(max_size=60),
    st.lists(_pieces, max_size=40).map("".join),
    st.lists(st.one_of(st.text(max_size=8), st.just(EOT)), max_size=8).map("".join),
)


@cache
def _pair(name: str) -> tuple[Tokenizer, "hf.Tokenizer"]:
    if name == "gpt2":
        base = Tokenizer.from_files(shared_path("fixtures/gpt2_vocab.json"), shared_path("fixtures/gpt2_merges.txt"))
        ours = Tokenizer(base.vocab, base.merges, SPECIALS)
    else:  # trained here on a small corpus: runs anywhere, no shared files needed
        counts = Counter(piece.encode("utf-8") for piece in PRETOKEN_RE.findall(CORPUS))
        ours = Tokenizer(*train_bpe_from_counts(counts, 400, SPECIALS), SPECIALS)
    return ours, hf.Tokenizer.from_str(json.dumps(tokenizer_json(ours)))


@pytest.fixture(scope="module", params=["small", "gpt2"])
def pair(request) -> tuple[Tokenizer, "hf.Tokenizer"]:
    return _pair(request.param)


@settings(max_examples=300)
@given(text=texts)
@example(text=f"a{EOT}{EOT}{EOT}b")
@example(text="x \u2028\u0085 \u00a0 y  ")
def test_tokenizers_encodes_to_our_ids_and_decodes_to_our_text(pair, text):
    ours, theirs = pair
    ids = ours.encode(text)
    assert theirs.encode(text).ids == ids
    assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids) == text
