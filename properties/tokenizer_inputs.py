"""What the tokenizer properties draw and load: the special tokens, the texts Hypothesis draws,
and GPT-2's tokenizer from ../shared."""

from functools import cache

from hypothesis import strategies as st

from conftest import shared_path
from core.tokenizer import Tokenizer
from tests.inputs import EOT

# Overlapping special tokens: the longest match must win wherever text is cut or streamed.
SPECIALS = [EOT, EOT + EOT]

# Pieces that reach every branch of the GPT-2 pattern: contractions, letters, digits, punctuation,
# each kind of whitespace (line and paragraph separators, NEL), a combining mark, an astral
# character, and parts of the special token.
pieces = st.sampled_from(
    [*"'sdmtlvre aZé1٣½.!—\n\t\r\u00a0\u3000\u0301\u2028\u0085😀<|>", "'ll", "'ve", "'re", "  ", "\n\n", EOT,
     "<|endoftext", "endoftext|>", "text|>"]
)
texts = st.one_of(
    st.text(max_size=60),
    st.lists(pieces, max_size=40).map("".join),
    st.lists(st.one_of(st.text(max_size=8), st.just(EOT)), max_size=8).map("".join),
)


@cache
def load_gpt2(specials: tuple[str, ...]) -> Tokenizer:
    """GPT-2's tokenizer from ../shared/fixtures with `specials` (skips the test where they are absent)."""
    return Tokenizer.from_files(
        shared_path("fixtures/gpt2_vocab.json"), shared_path("fixtures/gpt2_merges.txt"), list(specials)
    )
