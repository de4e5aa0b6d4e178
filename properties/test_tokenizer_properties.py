"""Properties of BPE training and of the tokenizer that hold for every input, checked with Hypothesis:
agreement with tiktoken's GPT-2, round trips, and that streaming and cutting never change the ids."""

from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import examples, shared_path
from core.bpe import train_bpe_from_counts
from core.pretokenize import first_safe_cut, last_safe_cut, special_token_regex, stable_length
from core.tokenizer import Tokenizer
from properties.tokenizer_inputs import EOT, SPECIALS, load_gpt2, pieces, texts


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return load_gpt2((EOT,))


@pytest.fixture(scope="module", params=[SPECIALS, []], ids=["overlapping-specials", "no-specials"])
def gpt2_variant(request) -> Tokenizer:
    """GPT-2 with overlapping special tokens (cuts must respect them), or with none (cuts then
    rest on the pre-token pattern alone)."""
    base = load_gpt2((EOT,))
    return Tokenizer(base.vocab, base.merges, request.param)


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(shared_path("tiktoken-cache")))
        return tiktoken.get_encoding("gpt2")


@settings(max_examples=examples(300))
@given(text=texts)
def test_encode_matches_tiktoken_and_decode_inverts_it(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert gpt2.decode(ids) == text


@settings(max_examples=examples(200))
@given(text=texts, continuation=texts)
# Ends that continuations change: "'l" + "l" is "'ll", and a space run gives its last space to a
# following word; and a run split in two ("\n", "\n" before a digit) that, cut, would be one.
@example(text="x'l", continuation="l")
@example(text="\n\n" + "0" * 30, continuation="")
@example(text="x'", continuation="ve")
@example(text="a  ", continuation="b")
@example(text="a <|endoftext|><|endof", continuation="text|>")
def test_the_stable_prefix_is_final_whatever_follows(gpt2_variant, text, continuation):
    tokenizer = gpt2_variant
    specials = tokenizer.special_tokens
    n = stable_length(text, special_token_regex(specials), max(map(len, specials), default=0))
    assert 0 <= n <= len(text)
    whole = tokenizer.encode(text + continuation)
    assert tokenizer.encode(text[:n]) + tokenizer.encode(text[n:] + continuation) == whole


@settings(max_examples=examples(150))
@given(text=texts, data=st.data())
def test_encode_iterable_gives_the_ids_of_the_whole_text_however_it_is_chunked(gpt2_variant, text, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    chunk_chars = data.draw(st.integers(1, 40))
    streamed = list(gpt2_variant.encode_iterable(chunks, chunk_chars=chunk_chars))
    assert streamed == gpt2_variant.encode(text)


@settings(max_examples=examples(200))
@given(text=st.lists(pieces, max_size=80).map("".join), data=st.data())
def test_safe_cuts_split_text_into_independently_tokenized_pieces(gpt2_variant, text, data):
    raw = text.encode("utf-8")
    specials = [token.encode() for token in gpt2_variant.special_tokens]
    start = data.draw(st.integers(0, len(raw)))
    whole = gpt2_variant.encode(text)
    for cut in (first_safe_cut(raw, specials, start), last_safe_cut(raw, specials)):
        if cut is None:
            continue
        head, tail = raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")
        assert gpt2_variant.encode(head) + gpt2_variant.encode(tail) == whole


def naive_merges(word_counts: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """BPE by the book: recount every pair before every merge."""
    words = [([bytes([b]) for b in word], count) for word, count in word_counts.items()]
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, count in words:
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        for index, (word, count) in enumerate(words):
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[index] = (merged, count)
    return merges


@settings(max_examples=examples(200))
@given(
    word_counts=st.dictionaries(
        st.lists(st.sampled_from(b"ab \xff\x00"), min_size=1, max_size=8).map(bytes), st.integers(1, 9), max_size=12
    ),
    num_merges=st.integers(1, 30),
)
def test_incremental_training_equals_recounting_from_scratch(word_counts, num_merges):
    vocab, merges = train_bpe_from_counts(word_counts, 257 + num_merges, [EOT])
    assert merges == naive_merges(word_counts, num_merges)
    assert list(vocab.values())[257:] == [left + right for left, right in merges]
