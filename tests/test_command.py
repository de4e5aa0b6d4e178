"""How every command ends (pipelines/command.py): a refusal is one line and exit 2, Ctrl-C is
exit 130 without a traceback, and anything else is announced as a bug before its traceback."""

import subprocess
import sys

import pytest

from core.errors import UsageError
from pipelines.command import EXIT_INTERRUPTED, EXIT_REFUSED, command
from tests.commands import ROOT


@command
def refuses(argv=None):
    raise UsageError("--thing 3: must be even")


@command
def interrupted(argv=None):
    raise KeyboardInterrupt


@command
def breaks(argv=None):
    return {}["missing"]


@command
def works(argv=None):
    return 0 if argv == ["ok"] else 1


def test_a_refusal_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as refused:
        refuses([])
    assert refused.value.code == EXIT_REFUSED == 2
    assert str(refused.value) == "error: --thing 3: must be even"
    assert capsys.readouterr().err == "error: --thing 3: must be even\n"


def test_ctrl_c_is_exit_130_and_quiet(capsys):
    with pytest.raises(SystemExit) as stopped:
        interrupted([])
    assert stopped.value.code == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == ""


def test_any_other_error_is_called_a_bug_and_keeps_its_exception(capsys):
    with pytest.raises(KeyError):
        breaks([])
    line = capsys.readouterr().err
    assert line.startswith("bug: KeyError is not a refusal of your input but a bug in lmkit") and "report" in line


def test_a_commands_own_exit_code_passes_through():
    assert works(["ok"]) == 0 and works([]) == 1


def test_a_bug_through_the_real_command_line_prints_the_line_then_the_traceback():
    script = "from pipelines.command import command\n@command\ndef main(argv=None):\n    raise RuntimeError('boom')\nmain()"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    first, *rest = result.stderr.splitlines()
    assert first.startswith("bug: RuntimeError") and rest[0].startswith("Traceback") and rest[-1] == "RuntimeError: boom"
