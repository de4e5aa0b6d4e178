"""The one exception type for a refusal of what the user asked for.

A `UsageError` says the input is wrong, not the program: a bad setting or file, a busy or missing
path, data that does not match, a device this machine lacks. Commands print it as one line naming
the problem. Every other exception is a bug and keeps its traceback. It subclasses ValueError, so
code that catches bad values (the reference suite, research scripts) catches it too.
"""


class UsageError(ValueError):
    """A refusal of bad input, printed by commands as one line without a traceback."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    refusal quotes of a library's error about a file, which can run to many lines."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
