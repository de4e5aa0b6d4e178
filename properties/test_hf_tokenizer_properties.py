"""The exported tokenizer.json, loaded by Hugging Face `tokenizers`, encodes every text to our ids
and decodes them back to our text: its ByteLevel pre-tokenizer cuts text where our GPT-2 pattern
does, and its added tokens are cut out as our special tokens are (the longest where they overlap)."""

import json
from collections import Counter
from functools import cache

import pytest
from hypothesis import example, given, settings

from conftest import examples
from core.bpe import train_bpe_from_counts
from core.pretokenize import PRETOKEN_RE
from core.tokenizer import Tokenizer
from pipelines.export.tokenizer_files import tokenizer_json
from properties.tokenizer_inputs import EOT, SPECIALS, load_gpt2, texts

hf = pytest.importorskip("tokenizers")

CORPUS = "Once upon a time, Lily's cat ran 12 laps! Été — 東京 😀\n\n  It's done.\t" * 3


@cache
def _pair(name: str) -> tuple[Tokenizer, "hf.Tokenizer"]:
    if name == "gpt2":
        ours = load_gpt2(tuple(SPECIALS))
    else:  # trained here on a small corpus: runs anywhere, no shared files needed
        counts = Counter(piece.encode("utf-8") for piece in PRETOKEN_RE.findall(CORPUS))
        ours = Tokenizer(*train_bpe_from_counts(counts, 400, SPECIALS), SPECIALS)
    return ours, hf.Tokenizer.from_str(json.dumps(tokenizer_json(ours)))


@pytest.fixture(scope="module", params=["small", "gpt2"])
def pair(request) -> tuple[Tokenizer, "hf.Tokenizer"]:
    return _pair(request.param)


@settings(max_examples=examples(300))
@given(text=texts)
@example(text=f"a{EOT}{EOT}{EOT}b")
@example(text="x \u2028\u0085 \u00a0 y  ")
def test_tokenizers_encodes_to_our_ids_and_decodes_to_our_text(pair, text):
    ours, theirs = pair
    ids = ours.encode(text)
    assert theirs.encode(text).ids == ids
    assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids) == text
