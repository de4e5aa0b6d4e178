"""GPT-2's printable-byte alphabet: every byte value written as one visible Unicode character.

Tokens are byte strings, but vocab.json keys and merges.txt lines are text. GPT-2 maps each of the
256 bytes to a character that is neither whitespace nor a control code (the space byte becomes
"Ġ", newline "Ċ"), so any token, including ones made of spaces or invalid UTF-8, is a single
visible word, and a merges line "A B" splits unambiguously on its one space.
"""

from functools import cache


@cache
def byte_alphabet() -> tuple[str, ...]:
    """The printable character of each byte value, indexed by the byte (GPT-2's `bytes_to_unicode`).

    Bytes that are already visible Latin-1 characters keep their own code point; the other 68
    (controls, space, DEL, NBSP, soft hyphen) are moved, in order, to code points 256 and up.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in visible}
    moved = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(moved)})
    return tuple(chars[b] for b in range(256))


def printable_byte_order() -> list[int]:
    """The 256 byte values in GPT-2's vocabulary order: visible ones first, the moved ones after."""
    alphabet = byte_alphabet()
    return sorted(range(256), key=lambda b: ord(alphabet[b]))


@cache
def _tables() -> tuple[dict[int, str], dict[int, int]]:
    """str.translate tables between Latin-1 text (one character per byte) and the printable alphabet."""
    alphabet = byte_alphabet()
    to_bytes = {ord(char): b for b, char in enumerate(alphabet)}
    # Latin-1 characters outside the alphabet (space, controls) must fail to encode, not pass through.
    to_bytes.update({code: "\ufffd" for code in range(256) if code not in to_bytes})
    return dict(enumerate(alphabet)), to_bytes


def to_printable(token: bytes) -> str:
    """`token` in the printable alphabet: b" the" -> "Ġthe"."""
    return token.decode("latin-1").translate(_tables()[0])


def from_printable(text: str) -> bytes:
    """The bytes a printable-alphabet string stands for; a ValueError names any foreign character."""
    latin1 = text.translate(_tables()[1])
    try:
        return latin1.encode("latin-1")
    except UnicodeEncodeError as error:
        raise ValueError(f"{text!r} holds {text[error.start]!r}, which is not in GPT-2's printable-byte alphabet") from None
