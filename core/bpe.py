"""Byte-pair-encoding training over pre-token counts.

The text itself is gone by the time we get here: pre-tokenization (see core/pretokenize.py and
pipelines/tokenizer/train.py) has reduced it to "how often does each pre-token occur". Training
repeatedly merges the most frequent adjacent pair of tokens inside those pre-tokens.

Recounting every pair after every merge would cost a pass over all pre-tokens per merge. Instead we
keep the pair counts, an index from each pair to the pre-tokens (words) that contain it, and a heap
of (count, pair); a merge touches only the words containing the merged pair and pushes fresh heap
entries for the pairs whose counts changed. Stale heap entries are skipped when popped.
"""

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


def descending_key(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in reverse: key(x) < key(y) exactly when x > y.

    Bytes are flipped (255 - b), and the end of the string counts as 256 so that a longer string
    comes before its own prefix. Concatenated keys of a pair compare like the pair, in reverse.
    """
    return (*(255 - b for b in token), 256)


def iter_merges(word_counts: Mapping[bytes, int], vocab: Mapping[int, bytes]) -> Iterator[tuple[bytes, bytes]]:
    """The merges BPE learns from `word_counts`, most frequent pair first, lazily.

    `vocab` (left unchanged) must hold all 256 single bytes; the merged tokens take the ids after
    it, in order, as `extend_vocab` assigns them. Ties in count go to the lexicographically greater
    pair of byte strings. Stops when no pair occurs any more (every word is a single token).
    """
    vocab = dict(vocab)  # grows by one token per merge: the ids of later pairs refer to it
    byte_id = {token[0]: i for i, token in vocab.items() if len(token) == 1}
    words = [[byte_id[b] for b in word] for word in word_counts]
    counts = list(word_counts.values())

    pair_counts: dict[Pair, int] = defaultdict(int)
    words_with: dict[Pair, set[int]] = defaultdict(set)
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            words_with[pair].add(w)

    # Heap entries (-count, reversed pair key, pair): the smallest is the most frequent pair and,
    # among equally frequent ones, the lexicographically greatest.
    keys = {i: descending_key(token) for i, token in vocab.items()}
    heap = [(-count, keys[a] + keys[b], (a, b)) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)
    next_id = max(vocab) + 1
    while heap:
        negative_count, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -negative_count:
            continue  # stale: the pair's count has changed since this entry was pushed
        first, second = pair
        vocab[next_id] = vocab[first] + vocab[second]
        keys[next_id] = descending_key(vocab[next_id])

        # Only the words that contain the pair change, and in them only the pairs around each
        # occurrence: (left, first) and (second, right) become (left, new) and (new, right).
        # (Written out inline: this loop is the hot spot of training.)
        touched: set[Pair] = set()
        for w in words_with.pop(pair):
            word, count = words[w], counts[w]
            n = len(word)
            merged: list[int] = []
            i = 0
            while i < n:
                if not (word[i] == first and i + 1 < n and word[i + 1] == second):
                    merged.append(word[i])
                    i += 1
                    continue
                pair_counts[pair] -= count
                if merged:  # the left neighbour: an old token, or the previous occurrence merged
                    left = merged[-1]
                    pair_counts[word[i - 1], first] -= count
                    pair_counts[left, next_id] += count
                    words_with[left, next_id].add(w)
                    touched.update(((word[i - 1], first), (left, next_id)))
                merged.append(next_id)
                i += 2
                # The right neighbour, unless it starts the next occurrence (handled there, as its left).
                if i < n and not (word[i] == first and i + 1 < n and word[i + 1] == second):
                    right = word[i]
                    pair_counts[second, right] -= count
                    pair_counts[next_id, right] += count
                    words_with[next_id, right].add(w)
                    touched.update(((second, right), (next_id, right)))
            if len(merged) < n:  # else the index was stale: the word lost the pair to an earlier merge
                words[w] = merged
        del pair_counts[pair]  # every occurrence is merged
        touched.discard(pair)
        for changed in touched:
            count = pair_counts[changed]
            if count:
                heapq.heappush(heap, (-count, keys[changed[0]] + keys[changed[1]], changed))
            else:
                del pair_counts[changed]

        yield vocab[first], vocab[second]
        next_id += 1


def extend_vocab(vocab: Mapping[int, bytes], merges: Iterable[tuple[bytes, bytes]]) -> dict[int, bytes]:
    """`vocab` plus one token per merge, under the ids after max(vocab), in merge order."""
    start = max(vocab) + 1
    return {**vocab, **{start + n: left + right for n, (left, right) in enumerate(merges)}}


def train_bpe_from_counts(
    word_counts: Mapping[bytes, int], vocab_size: int, special_tokens: Sequence[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on pre-token counts: (vocab id -> token bytes, merges in order).

    The vocabulary holds the special tokens, the 256 bytes, then one token per merge, up to
    `vocab_size` entries; fewer when the words run out of pairs first.
    """
    vocab = initial_vocab(special_tokens, vocab_size)
    merges = list(islice(iter_merges(word_counts, vocab), vocab_size - len(vocab)))
    return extend_vocab(vocab, merges), merges
