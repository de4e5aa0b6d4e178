"""README's commands work as written: its Python examples (and docs/research.md's) run, and every
`just` line and `torchrun` line of README parses through the real parser of the command the
justfile runs for it, with the trainer's and the sweep's settings resolved to configs."""

import re
import shlex
from pathlib import Path

import pytest

from pipelines.experiments import sweep
from pipelines.training import cli
from pipelines.training.config.config import parse_overrides
from tests.commands import NOT_COMMANDS, ROOT, command_module, recipe_modules, recipes

README = ROOT / "README.md"
RESEARCH = ROOT / "docs" / "research.md"


@pytest.mark.parametrize("page", [README, RESEARCH], ids=lambda page: page.name)
def test_python_examples_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks or page == README, f"{page} has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(page), "exec"), namespace)
        if "logits" in namespace:
            assert namespace["logits"].shape == (2, 64, namespace["config"].vocab_size)
            assert namespace["grads"].keys() == namespace["params"].keys()


def shell_lines(page: Path = README) -> list[str]:
    """The command lines of the page's bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def just_commands() -> list[tuple[str, list[str]]]:
    """(recipe, arguments) of every `just` line; `just bench NAME` is the recipe "bench NAME"."""
    commands = []
    for line in shell_lines():
        words = shlex.split(line)
        if words[0] != "just":
            continue
        recipe, args = words[1], words[2:]
        if recipe == "bench":
            recipe, args = f"bench {args[0]}", args[1:]
        commands.append((recipe, args))
    return commands


def test_readme_shows_every_kind_of_command():
    shown = {recipe.split()[0] for recipe, _ in just_commands()}
    assert {"train", "generate", "plot", "sweep", "train-tokenizer", "tokenize", "accounting", "split-text", "test"} <= shown


@pytest.mark.parametrize("recipe, args", just_commands(), ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_every_just_line_parses_through_its_commands_real_parser(recipe, args):
    if recipe in NOT_COMMANDS:
        assert recipe in recipes(), f"README runs `just {recipe}`, which the justfile lacks"
        return
    assert recipe in recipe_modules(), f"README runs `just {recipe}`, which the justfile lacks"
    parsed = command_module(recipe).parser().parse_args(args)  # an unknown flag or bad value raises here
    if recipe == "train" and not parsed.resume:  # resuming reads a run directory that does not exist here
        cli.config_from_args(parsed)
    if recipe == "sweep":
        fixed = parse_overrides(parsed.set)
        for variant in sweep.make_variants(parsed.vary, parsed.variant):
            sweep.resolve_variant(parsed.config, fixed, variant, Path("runs") / variant.name)


def test_torchrun_lines_start_the_trainer_from_the_virtual_environment_with_real_settings():
    commands = [shlex.split(line) for line in shell_lines() + shell_lines(ROOT / "docs" / "scale-out.md") if "torchrun" in line.split()[0]]
    assert len(commands) >= 3
    for words in commands:
        assert words[0] == ".venv/bin/torchrun", "README's torchrun lines run the virtual environment's torchrun"
        module = words.index("-m")
        assert words[module + 1] == "pipelines.training.cli"
        cli.config_from_args(cli.parser().parse_args(words[module + 2 :]))
