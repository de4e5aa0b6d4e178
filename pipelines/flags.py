"""One flag style for every command: the parser each command builds its command line with.

Flags are spelled as the trainer spells its settings, with underscores and dotted setting names
(`--max_steps`, `--sample.top_p`, `--model.vocab_size`); `--help` and README show that spelling.
Dashes are accepted for underscores anywhere in a flag's name (`--max-steps`, `--sample.top-p`).
A mistake is one line, raised as a UsageError (the command prints it; pipelines/command.py): an
unknown flag names the closest known ones, a bad value names its flag. argparse's own habit of
printing the whole usage before a one-line error is what this replaces.

Numbers are checked where they are read: `integer(low, high)`, `integers(low, high)` (a
comma-separated list of them) and `number(low, high)` are argparse types that refuse a value that
is not a number, not finite, out of its range or too large for a 64-bit integer, naming the flag,
before the command does any work.
"""

import argparse
import difflib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.errors import UsageError

# The machine's integers: every count a command passes on (to numpy, torch, JSON) fits in int64.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class CommandParser(argparse.ArgumentParser):
    """argparse with the project's spelling: underscores or dashes alike, one-line errors, no
    abbreviations (a prefix of a flag is not that flag)."""

    def __init__(self, prog: str, description: str | None = None, **kwargs: Any) -> None:
        super().__init__(prog=prog, description=description, allow_abbrev=False, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._respelled(args), namespace)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        unknown = self._unknown_flags(args)
        if unknown:  # named first: argparse would complain of a missing flag the user misspelled
            raise UsageError(self._unknown(unknown))
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            raise UsageError(self._unknown(extras))
        return parsed

    def error(self, message: str) -> None:  # type: ignore[override]
        """argparse's errors (a missing or malformed value, a bad choice) as one line."""
        if message.startswith("argument "):  # it names the flag already
            raise UsageError(message)
        raise UsageError(f"{message} (see {self.prog} --help)")

    def flags(self) -> list[str]:
        """Every flag this parser knows, as spelled in --help."""
        return sorted(name for name in self._option_string_actions if name.startswith("--"))

    def _respelled(self, args: list[str]) -> list[str]:
        """`args` with each flag spelled with dashes rewritten to its known underscore spelling;
        anything else (values, unknown flags, all after a bare `--`) is left as it is."""
        known = set(self._option_string_actions)
        out: list[str] = []
        for index, arg in enumerate(args):
            if arg == "--":
                return out + args[index:]
            name, equals, value = arg.partition("=")
            if name.startswith("--") and canonical(name) in known:
                arg = canonical(name) + equals + value
            out.append(arg)
        return out

    def _unknown_flags(self, args: list[str]) -> list[str]:
        known = set(self._option_string_actions)
        flags = [arg for arg in (args[: args.index("--")] if "--" in args else args) if arg.startswith("--")]
        return [arg for arg in flags if canonical(arg.partition("=")[0]) not in known]

    def _unknown(self, extras: list[str]) -> str:
        flag = next((arg for arg in extras if arg.startswith("-")), None)
        if flag is None:
            return f"unexpected argument {extras[0]!r} (see {self.prog} --help)"
        name = canonical(flag.partition("=")[0])
        close = closest(name, self.flags())
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; {self.prog} --help lists the flags"
        return f"unknown flag {name}{hint}"


def canonical(flag: str) -> str:
    """`--max-steps` -> `--max_steps`: the one spelling of a long flag."""
    return "--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag


def closest(name: str, known: Sequence[str], count: int = 3) -> list[str]:
    """Up to `count` known flags nearest `name`, comparing whole names and their last dotted part
    (so `--top_p` finds `--sample.top_p` and `--vocab_size` finds `--model.vocab_size`)."""
    bare = name.lstrip("-")
    scores = {}
    for flag in known:
        whole = flag.lstrip("-")
        leaf = whole.rsplit(".", 1)[-1]
        scores[flag] = max(difflib.SequenceMatcher(None, bare, whole).ratio(),
                           difflib.SequenceMatcher(None, bare.rsplit(".", 1)[-1], leaf).ratio())
    ranked = sorted((flag for flag, score in scores.items() if score >= 0.6), key=lambda flag: -scores[flag])
    return ranked[:count]


def integer(low: int = INT64_MIN, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (and always within int64)."""
    low, high = max(low, INT64_MIN), min(high, INT64_MAX)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {_range(low, high)}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def integers(low: int = INT64_MIN, high: int = INT64_MAX) -> Callable[[str], list[int]]:
    """An argparse type: a comma-separated list of integers, each as `integer(low, high)` checks it."""
    one = integer(low, high)

    def parse(text: str) -> list[int]:
        return [one(part.strip()) for part in text.split(",")]

    parse.__name__ = "integers"
    return parse


def number(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (or (low, high] when `open_low`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
        inside = (low < value if open_low else low <= value) and value <= high
        if not (math.isfinite(value) and inside):
            bounds = f"{'above' if open_low else 'at least'} {low:g}" if math.isfinite(low) else ""
            if math.isfinite(high):
                bounds += f"{' and ' if bounds else ''}at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + bounds if bounds else ''}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def processes() -> Callable[[str], int]:
    """An argparse type for a count of worker processes: from 1 to four per CPU of this machine
    (more would only make the processes wait on each other and hold memory)."""
    return integer(1, 4 * (os.cpu_count() or 1))


def _range(low: int, high: int) -> str:
    if high == INT64_MAX:
        return f"an integer >= {low}" if low != INT64_MIN else "an integer that fits in 64 bits"
    return f"an integer from {low} to {high}"
