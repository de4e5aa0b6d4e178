"""How every command ends: the one wrapper around each command's `main(argv)`.

- A `UsageError` (core/errors.py: the input was refused: a bad flag, file, setting or device) is
  printed as one line, `error: ...`, and the command exits 2. In-process callers (tests, scripts)
  see it as a `SystemExit` whose code is 2 and whose text is that line.
- Ctrl-C exits 130 without a traceback (the trainer handles SIGINT itself and saves first).
- Any other exception is a bug in lmkit, not in the input: one line says so and where to report
  it, then the traceback follows as Python prints it.
"""

import functools
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from core.errors import UsageError

EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130
REPORT = "please report it, with the command and the traceback below, as an issue on lmkit's repository"

Result = TypeVar("Result")


def command(main: Callable[[Sequence[str] | None], Result]) -> Callable[[Sequence[str] | None], Result]:
    """`main` with the project's endings (above); its own return value (an exit code or None)
    passes through."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> Result:
        try:
            return main(argv)
        except UsageError as error:
            line = f"error: {error}"
            print(line, file=sys.stderr)
            refused = SystemExit(line)
            refused.code = EXIT_REFUSED  # the exit status; the text stays the line, for callers that read it
            raise refused from None
        except KeyboardInterrupt:
            raise SystemExit(EXIT_INTERRUPTED) from None
        except Exception as error:
            print(f"bug: {type(error).__name__} is not a refusal of your input but a bug in lmkit; {REPORT}", file=sys.stderr)
            raise

    return run
