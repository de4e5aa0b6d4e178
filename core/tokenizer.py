"""A byte-level BPE tokenizer: text to token ids and back, given a vocabulary and merges.

Encoding cuts out special tokens, splits the rest into pre-tokens with the GPT-2 pattern, and turns
each pre-token into ids by applying merges lowest rank (earliest learned) first. Text repeats its
words, so each distinct pre-token is merged once and then served from a cache.

The text formats are GPT-2's, vocab.json and merges.txt in the printable-byte alphabet
(`parse_vocab` / `format_vocab`, `parse_merges` / `format_merges`); HuggingFace `tokenizers` and
GPT-2's own files read the same way. `Tokenizer.from_files` is the handout's reader of those two
files; directories of them are loaded and saved by pipelines/tokenizer/store.py.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import chain
from os import PathLike

from core.bytes_unicode import from_printable, to_printable
from core.pretokenize import PRETOKEN_RE, special_token_regex, split_on_special, stable_length

# Past this many distinct pre-tokens the cache starts over: memory stays bounded on endless streams,
# and real text's frequent words are back in it within a few kilobytes.
_CACHE_LIMIT = 1 << 20
# Rank of a pair that no merge joins: after every real rank.
_NO_MERGE = (float("inf"), -1)


class Tokenizer:
    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
    ):
        """`vocab`: id -> token bytes; `merges`: in the order learned; `special_tokens`: strings
        always kept whole, added to the vocabulary (under new ids) where absent."""
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = list(dict.fromkeys(special_tokens or []))
        if "" in self.special_tokens:
            raise ValueError("special tokens must be non-empty strings")
        self._id_of = {token: i for i, token in self.vocab.items()}
        for special in self.special_tokens:
            token = special.encode("utf-8")
            if token not in self._id_of:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = token
                self._id_of[token] = new_id
        self._special_ids = {special: self._id_of[special.encode("utf-8")] for special in self.special_tokens}
        self._special_re = special_token_regex(self.special_tokens)
        self._longest_special = max(map(len, self.special_tokens), default=0)

        # Byte value -> id; a vocabulary may lack some bytes, as long as the text never uses them.
        self._byte_ids = {b: self._id_of[bytes([b])] for b in range(256) if bytes([b]) in self._id_of}
        # (left id, right id) -> (rank, merged id): the merge table in the form encoding needs.
        self._merge_of: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self.merges):
            merged = self._id_of.get(left + right)
            if merged is None or left not in self._id_of or right not in self._id_of:
                raise ValueError(f"merge {rank} ({left!r}, {right!r}) uses or makes a token missing from the vocabulary")
            self._merge_of.setdefault((self._id_of[left], self._id_of[right]), (rank, merged))
        self._cache: dict[str, tuple[int, ...]] = {}

    def __getstate__(self) -> dict:
        # Sent to worker processes without the cache: it can be large, and they fill their own.
        return {**self.__dict__, "_cache": {}}

    # -- encoding -----------------------------------------------------------------------------

    def _merge(self, piece: str) -> tuple[int, ...]:
        """The ids of one pre-token: its bytes, merged lowest-rank pair first until no merge applies."""
        try:
            ids = [self._byte_ids[b] for b in piece.encode("utf-8")]
        except KeyError as error:
            raise ValueError(f"byte {error.args[0]:#04x} of {piece!r} has no token in the vocabulary") from None
        # Rank of each adjacent pair (with the id it merges into); merge the lowest, leftmost among
        # equals, and re-rank only its two neighbours. One occurrence at a time is the same as all
        # left to right: a merge's result only takes part in later-ranked merges.
        get = self._merge_of.get
        ranked = [get(pair, _NO_MERGE) for pair in zip(ids, ids[1:])]
        while ranked:
            best = min(ranked)
            if best is _NO_MERGE:
                break
            i = ranked.index(best)
            ids[i : i + 2] = [best[1]]
            del ranked[i]
            if i > 0:
                ranked[i - 1] = get((ids[i - 1], ids[i]), _NO_MERGE)
            if i < len(ranked):
                ranked[i] = get((ids[i], ids[i + 1]), _NO_MERGE)
        return tuple(ids)

    def _encode_plain(self, text: str) -> list[int]:
        """Ids of text that holds no special tokens."""
        pieces = PRETOKEN_RE.findall(text)
        cache = self._cache
        new = set(pieces).difference(cache)
        if len(cache) + len(new) > _CACHE_LIMIT:
            cache.clear()
            new = set(pieces)
        for piece in new:
            cache[piece] = self._merge(piece)
        return list(chain.from_iterable(map(cache.__getitem__, pieces)))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens (longest first where they overlap) map to their own id."""
        ids: list[int] = []
        for i, segment in enumerate(split_on_special(text, self._special_re)):
            if i % 2:
                ids.append(self._special_ids[segment])
            elif segment:
                ids += self._encode_plain(segment)
        return ids

    def encode_iterable(self, iterable: Iterable[str], *, chunk_chars: int = 1 << 16) -> Iterator[int]:
        """Lazily the ids of `"".join(iterable)` (e.g. a file handle), holding about `chunk_chars`
        characters at a time: text is encoded up to the last point that more text cannot change."""
        buffered: list[str] = []
        size = 0
        for text in iterable:
            buffered.append(text)
            size += len(text)
            if size >= chunk_chars:
                text = "".join(buffered)
                cut = stable_length(text, self._special_re, self._longest_special)
                yield from self.encode(text[:cut])
                buffered, size = [text[cut:]], len(text) - cut
        yield from self.encode("".join(buffered))

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        try:
            data = b"".join(map(self.vocab.__getitem__, ids))
        except KeyError as error:
            raise ValueError(f"token id {error.args[0]!r} is not in the vocabulary (ids 0..{max(self.vocab)})") from None
        return data.decode("utf-8", errors="replace")

    # -- files --------------------------------------------------------------------------------

    @classmethod
    def from_files(
        cls, vocab_filepath: str | PathLike, merges_filepath: str | PathLike, special_tokens: list[str] | None = None
    ) -> "Tokenizer":
        """Read GPT-2-format files: vocab.json (printable token -> id) and merges.txt ("A B" per line,
        an optional "#version" first line)."""
        with open(vocab_filepath, encoding="utf-8") as file:
            vocab = parse_vocab(file.read())
        with open(merges_filepath, encoding="utf-8") as file:
            merges = parse_merges(file.read(), source=str(merges_filepath))
        return cls(vocab, merges, special_tokens)

    def fingerprint(self) -> str:
        """sha256 of the vocabulary, merges and special tokens: equal fingerprints, equal encodings."""
        digest = hashlib.sha256()
        for i, token in sorted(self.vocab.items()):
            digest.update(b"v%d:%d:" % (i, len(token)) + token)
        for left, right in self.merges:
            digest.update(b"m%d:%d:" % (len(left), len(right)) + left + right)
        for special in self.special_tokens:
            digest.update(b"s%d:" % len(special.encode("utf-8")) + special.encode("utf-8"))
        return digest.hexdigest()


def parse_vocab(text: str) -> dict[int, bytes]:
    """id -> token bytes from vocab.json's text: a JSON object of printable token -> id."""
    return {i: from_printable(token) for token, i in json.loads(text).items()}


def format_vocab(vocab: dict[int, bytes]) -> str:
    """vocab.json's text for `vocab`, tokens in id order."""
    printable = {to_printable(token): i for i, token in sorted(vocab.items())}
    return json.dumps(printable, ensure_ascii=False, indent=1) + "\n"


def parse_merges(text: str, source: str = "merges.txt") -> list[tuple[bytes, bytes]]:
    """The merges of merges.txt's text, in order: "A B" per line, an optional "#version" first
    line. Errors name `source` and the line."""
    merges = []
    # Split on newlines only: str.splitlines would also split on characters such as U+0085.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        left, sep, right = line.partition(" ")
        if not sep or " " in right:
            raise ValueError(f"{source}:{number}: expected two tokens separated by one space, got {line!r}")
        merges.append((from_printable(left), from_printable(right)))
    return merges


def format_merges(merges: list[tuple[bytes, bytes]]) -> str:
    """merges.txt's text for `merges`, with GPT-2's "#version: 0.2" first line."""
    lines = ["#version: 0.2"] + [f"{to_printable(left)} {to_printable(right)}" for left, right in merges]
    return "\n".join(lines) + "\n"
