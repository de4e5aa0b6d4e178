"""Every command a user runs, found where the user finds them: the justfile's recipes.

Each recipe that runs `{{python}} -m MODULE` is a command whose MODULE has `parser()` (the
project's CommandParser) and `main(argv)`; `just bench NAME` is one command per bench/NAME.py.
Tests of the command lines take their list from here: flag spelling and README's commands cover a
new recipe without editing them; the numbers-checked test's cases are written by hand (each needs
a working command line), and it fails when a recipe whose parser reads numbers has none.
"""

import functools
import importlib
import re
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent  # the project's folder
# Recipes that are not commands of the project: they install it or run pytest.
NOT_COMMANDS = {"setup", "test", "test-all"}
# A recipe's first line, "NAME PARAMETERS...: DEPENDENCIES" (not a "NAME := VALUE" assignment).
RECIPE_HEADER = re.compile(r"^([a-z][\w-]*)\b[^:=]*:(?!=)")


def recipes() -> set[str]:
    """The names of the justfile's recipes."""
    lines = (ROOT / "justfile").read_text().splitlines()
    return {header.group(1) for header in map(RECIPE_HEADER.match, lines) if header}


@functools.cache
def recipe_modules() -> dict[str, str]:
    """{recipe: module} for every recipe that runs a module; "bench NAME" for each benchmark."""
    modules, recipe = {}, None
    for line in (ROOT / "justfile").read_text().splitlines():
        header = RECIPE_HEADER.match(line)
        if header:
            recipe = header.group(1)
        found = re.search(r"\{\{python\}\} -m ([\w.{}]+)", line)
        if recipe and found and recipe not in NOT_COMMANDS:
            module = found.group(1)
            if "{{NAME}}" in module:
                for path in sorted((ROOT / "bench").glob("*.py")):
                    candidate = module.replace("{{NAME}}", path.stem)
                    if hasattr(importlib.import_module(candidate), "parser"):
                        modules[f"{recipe} {path.stem}"] = candidate
            else:
                modules[recipe] = module
    return modules


def command_module(recipe: str) -> ModuleType:
    return importlib.import_module(recipe_modules()[recipe])


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused command, which failed without a traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]
