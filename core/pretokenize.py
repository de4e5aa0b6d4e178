"""Pre-tokenization: cutting text into the words that BPE merges inside of, never across.

Three jobs, shared by training and encoding:
  * the GPT-2 pattern, which splits text into pre-tokens (" the", "'s", "\\n\\n", ...);
  * special tokens (e.g. "<|endoftext|>"), which are cut out first and never pre-tokenized;
  * safe cut points, where a long stream can be split into pieces that are processed on their own
    (in parallel, or one after the other in bounded memory) with exactly the result of processing
    the whole stream at once.
"""

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PATTERN)
_SPACE = regex.compile(r"\s")

# A pre-token that ends at least this many characters before the end of the known text cannot be
# changed by more text: deciding it reads the character where its greedy run stops (at its end) and
# at most two characters past its start (the failed tries of `'ll`, `'ve`, `'re`). A `\s+(?!\S)`
# match that gave back its last space reads one further, but that character is known: it is the
# non-space that made it give the space back.
_LOOKAHEAD_MARGIN = 2

# A newline between two visible ASCII characters always stands alone as the pre-token "\n": the
# character before ends its own pre-token and the one after starts a new one.
_NEWLINE_CUT = rb"(?<=[\x21-\x7e]\n)(?=[\x21-\x7e])"
_NEWLINE_CUTS = {False: regex.compile(_NEWLINE_CUT), True: regex.compile(_NEWLINE_CUT, regex.REVERSE)}


def special_token_regex(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A pattern matching any special token, longest first, so "<|a|><|a|>" wins over "<|a|>".

    The group makes `regex.split` keep the tokens: odd items of the split are the specials.
    """
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(token) for token in ordered) + ")")


def split_on_special(text: str, special_re: regex.Pattern | None) -> list[str]:
    """[text, special, text, special, ..., text]: special tokens at the odd positions."""
    return [text] if special_re is None else special_re.split(text)


def count_pretokens(text: str, special_re: regex.Pattern | None) -> Counter[str]:
    """How often each pre-token occurs in `text`, special tokens removed (they are never merged)."""
    counts: Counter[str] = Counter()
    for segment in split_on_special(text, special_re)[::2]:
        counts.update(PRETOKEN_RE.findall(segment))
    return counts


def stable_length(text: str, special_re: regex.Pattern | None, longest_special: int) -> int:
    """Length of the longest prefix of `text` whose tokenization no continuation of the text can change.

    `text` is the start of a stream that goes on. Encoding `text[:n]` now and the rest later, after
    more text has arrived, gives the ids of encoding everything at once. 0 when nothing is safe yet.
    """
    # Past `limit` a special token might still be growing into a longer one, or be a longer one's head.
    limit = len(text) - longest_special if special_re is not None else len(text)
    open_start = 0
    if special_re is not None:
        for match in special_re.finditer(text):
            if match.start() > limit:
                break
            open_start = match.end()
    # Walk back over the open part's pre-tokens to the last one that is final and that also ends
    # the same way when the text is cut after it: not so if it ends in whitespace, where the end
    # of the text would let `\s+(?!\S)` take a whole space run that the full text splits in two.
    end = len(text)
    for piece in reversed(PRETOKEN_RE.findall(text, open_start)):
        if end <= limit - _LOOKAHEAD_MARGIN and not _SPACE.match(piece, len(piece) - 1):
            return end
        end -= len(piece)
    return open_start


class _Occurrences:
    """Where any special token occurs in a byte string, overlapping occurrences included."""

    def __init__(self, data: bytes, special_tokens: Sequence[bytes]):
        self.longest = max(map(len, special_tokens), default=0)
        self.starts: list[int] = []
        self.ends: list[int] = []
        if special_tokens:
            ordered = sorted(set(special_tokens), key=len, reverse=True)
            pattern = regex.compile(b"|".join(regex.escape(token) for token in ordered))
            for match in pattern.finditer(data, overlapped=True):
                self.starts.append(match.start())
                self.ends.append(match.end())

    def clear(self, lo: int, hi: int) -> bool:
        """No occurrence overlaps data[lo:hi]."""
        first = bisect_left(self.starts, lo - self.longest + 1)
        last = bisect_left(self.starts, hi)
        return all(end <= lo for end in self.ends[first:last])


def _cuts(data: bytes, special_tokens: Sequence[bytes], start: int, reverse: bool) -> list[int]:
    """The first (or, reversed, the last) safe cut of each kind at or after `start`."""
    occurrences = _Occurrences(data, special_tokens)
    longest = occurrences.longest
    found = []
    # Just before a special token, when no other special token reaches into the bytes before it:
    # then no longer special token can be in progress there.
    indices = range(bisect_left(occurrences.starts, start), len(occurrences.starts))
    for index in reversed(indices) if reverse else indices:
        cut = occurrences.starts[index]
        if cut + longest <= len(data) and occurrences.clear(cut - longest, cut):
            found.append(cut)
            break
    # Just after a lone newline, away from any special token.
    for match in _NEWLINE_CUTS[reverse].finditer(data, start):
        cut = match.start()
        if cut + 2 * longest <= len(data) and occurrences.clear(cut - longest, cut + longest):
            found.append(cut)
            break
    return found


def first_safe_cut(data: bytes, special_tokens: Sequence[bytes], start: int = 0) -> int | None:
    """The first position at or after `start` where UTF-8 text `data` can be cut into two pieces
    that tokenize, each on its own, exactly as the whole does (None when there is none).

    Text before `start` must reach back at least twice the longest special token, or to the start
    of the stream, so that a special token straddling the cut would be seen.
    """
    return min(_cuts(data, special_tokens, start, reverse=False), default=None)


def last_safe_cut(data: bytes, special_tokens: Sequence[bytes]) -> int | None:
    """The last such position in `data`, a stream piece that begins at a safe cut (None if none)."""
    return max(_cuts(data, special_tokens, 0, reverse=True), default=None)
