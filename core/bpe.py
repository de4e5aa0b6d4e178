"""Byte-pair-encoding training over pre-token counts.

The text itself is gone by the time we get here: pre-tokenization (see core/pretokenize.py and
pipelines/train_tokenizer.py) has reduced it to "how often does each pre-token occur". Training
repeatedly merges the most frequent adjacent pair of tokens inside those pre-tokens.

Recounting every pair after every merge would cost a pass over all pre-tokens per merge. Instead we
keep the pair counts, an index from each pair to the pre-tokens (words) that contain it, and a heap
of (count, pair); a merge touches only the words containing the merged pair and pushes fresh heap
entries for the pairs whose counts changed. Stale heap entries are skipped when popped.
"""

import heapq
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice

from core.bytes_unicode import printable_byte_order

Pair = tuple[int, int]


def initial_vocab(special_tokens: Sequence[str], vocab_size: int) -> dict[int, bytes]:
    """Special tokens first, then the 256 single bytes in GPT-2's vocabulary order.

    This is the layout of the reference tokenizer's vocab.json (and, specials aside, of GPT-2's).
    Raises ValueError when `vocab_size` cannot hold even these, or a special token is empty.
    """
    if any(token == "" for token in special_tokens):
        raise ValueError("special tokens must be non-empty strings")
    tokens = [token.encode("utf-8") for token in dict.fromkeys(special_tokens)]
    tokens += [bytes([b]) for b in printable_byte_order()]
    if vocab_size < len(tokens):
        raise ValueError(
            f"vocab_size {vocab_size} is too small: the 256 bytes and {len(tokens) - 256} special "
            f"token(s) alone need {len(tokens)}"
        )
    return dict(enumerate(tokens))


class _Descending:
    """Inverts the order of a key, so that Python's min-heap pops the greatest pair first on ties."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[bytes, bytes]):
        self.key = key

    def __lt__(self, other: "_Descending") -> bool:
        return self.key > other.key


def _merge_word(word: tuple[int, ...], pair: Pair, new_id: int) -> tuple[int, ...]:
    """`word` with each occurrence of `pair`, left to right, replaced by `new_id`."""
    first, second = pair
    merged = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == first and word[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def iter_merges(word_counts: Mapping[bytes, int], vocab: dict[int, bytes]) -> Iterator[tuple[bytes, bytes]]:
    """The merges BPE learns from `word_counts`, most frequent pair first, lazily.

    Each merge adds the merged token to `vocab` (which must hold all 256 single bytes) under the
    next id. Ties in count go to the lexicographically greater pair of byte strings. Stops when no
    pair occurs any more (every word is a single token).
    """
    byte_id = {token[0]: i for i, token in vocab.items() if len(token) == 1}
    words = [tuple(byte_id[b] for b in word) for word in word_counts]
    counts = list(word_counts.values())

    pair_counts: dict[Pair, int] = defaultdict(int)
    words_with: dict[Pair, set[int]] = defaultdict(set)
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            words_with[pair].add(w)

    def entry(pair: Pair, count: int) -> tuple[int, _Descending, Pair]:
        return (-count, _Descending((vocab[pair[0]], vocab[pair[1]])), pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    next_id = max(vocab) + 1
    while heap:
        negative_count, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -negative_count:
            continue  # stale: the pair's count has changed since this entry was pushed
        vocab[next_id] = vocab[pair[0]] + vocab[pair[1]]

        # Re-count only the words that contain the pair: their old pairs out, their new pairs in.
        changes: dict[Pair, int] = defaultdict(int)
        for w in words_with.pop(pair):
            word, count = words[w], counts[w]
            merged = _merge_word(word, pair, next_id)
            if len(merged) == len(word):
                continue  # the index is lazy: this word lost the pair to an earlier merge
            words[w] = merged
            for old in zip(word, word[1:]):
                changes[old] -= count
            for new in zip(merged, merged[1:]):
                changes[new] += count
                if next_id in new:
                    words_with[new].add(w)
        for changed, delta in changes.items():
            if delta:
                count = pair_counts[changed] + delta
                if count:
                    pair_counts[changed] = count
                    heapq.heappush(heap, entry(changed, count))
                else:
                    del pair_counts[changed]

        yield vocab[pair[0]], vocab[pair[1]]
        next_id += 1


def train_bpe_from_counts(
    word_counts: Mapping[bytes, int], vocab_size: int, special_tokens: Sequence[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on pre-token counts: (vocab id -> token bytes, merges in order).

    The vocabulary holds the special tokens, the 256 bytes, then one token per merge, up to
    `vocab_size` entries; fewer when the words run out of pairs first.
    """
    vocab = initial_vocab(special_tokens, vocab_size)
    merges = list(islice(iter_merges(word_counts, vocab), vocab_size - len(vocab)))
    return vocab, merges
