"""The handout's Unicode questions (§2.1-2.2), answered by running them: `python -m pipelines.experiments.unicode_demo`.

unicode1: what chr(0) is and how it shows; unicode2: UTF-8 against UTF-16/32 sizes, why decoding
UTF-8 byte by byte is wrong, and a two-byte sequence that decodes to nothing.
"""

import sys
from collections.abc import Sequence

from pipelines.command import command
from pipelines.flags import CommandParser

SAMPLES = ("hello! こんにちは!", "Once upon a time", "naïve café", "😀 emoji")
INVALID = (b"\xc3\x28", b"\x80\x80")


def decode_utf8_bytes_to_str_wrong(bytestring: bytes) -> str:
    """The handout's incorrect decoder: it decodes each byte on its own."""
    return "".join([bytes([b]).decode("utf-8") for b in bytestring])


def attempt(function, argument) -> str:
    """`repr` of the result, or the exception it raised."""
    try:
        return repr(function(argument))
    except UnicodeDecodeError as error:
        return f"UnicodeDecodeError: {error}"


def unicode1() -> list[str]:
    text = "this is a test" + chr(0) + "string"
    return [
        "## unicode1",
        f"chr(0) is U+0000 NULL: repr {chr(0)!r}, name 'NULL', printed as [{chr(0)}] (an invisible control character)",
        f"in text, repr shows it escaped: {text!r}",
        f"print writes the raw NUL byte, which a terminal shows as nothing: [{text}]",
        f"it is still there: len = {len(text)}, encoded {text.encode('utf-8')!r}",
    ]


def unicode2() -> list[str]:
    lines = ["## unicode2 (a): bytes per encoding", "", "| text | characters | UTF-8 | UTF-16 | UTF-32 |", "|---|---:|---:|---:|---:|"]
    for text in SAMPLES:
        # -le: without a byte-order mark, so the counts are of the text alone.
        sizes = [len(text.encode(codec)) for codec in ("utf-8", "utf-16-le", "utf-32-le")]
        lines.append(f"| {text} | {len(text)} | " + " | ".join(map(str, sizes)) + " |")
    zeros = "Once".encode("utf-32-le")
    lines += [
        "",
        f"UTF-32 of 'Once': {list(zeros)} - mostly zero bytes; byte-level BPE on it would spend merges on padding.",
        "",
        "## unicode2 (b): decoding byte by byte",
        f"wrong('hello') -> {attempt(decode_utf8_bytes_to_str_wrong, 'hello'.encode('utf-8'))}",
        f"wrong('café') -> {attempt(decode_utf8_bytes_to_str_wrong, 'café'.encode('utf-8'))}",
        f"right('café') -> {'café'.encode('utf-8').decode('utf-8')!r}",
        "'é' is two bytes (0xc3 0xa9): neither is a character alone, so any non-ASCII input breaks the wrong decoder.",
        "",
        "## unicode2 (c): a two-byte sequence that is not UTF-8",
        *(f"{invalid!r}.decode('utf-8') -> {attempt(bytes.decode, invalid)}" for invalid in INVALID),
        "0xc3 opens a two-byte character but 0x28 is not a continuation byte (10xxxxxx); 0x80 is a continuation with no lead.",
    ]
    return lines


def parser() -> CommandParser:
    return CommandParser(prog="python -m pipelines.experiments.unicode_demo", description=__doc__.split("\n\n")[0])


@command
def main(argv: Sequence[str] | None = None) -> None:
    parser().parse_args(argv)
    print("\n".join(unicode1() + [""] + unicode2()))


if __name__ == "__main__":
    sys.exit(main())
