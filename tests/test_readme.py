"""README's code examples run as written."""

import re
import shlex
from pathlib import Path

from pipelines.experiments import sweep
from pipelines.experiments.sweep import make_variants
from pipelines.training import cli
from pipelines.training.config.config import parse_overrides

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        if "logits" in namespace:
            assert namespace["logits"].shape == (2, 64, namespace["config"].vocab_size)
            assert namespace["grads"].keys() == namespace["params"].keys()


def readme_commands(prefix: str) -> list[list[str]]:
    """The argument lists of README's shell commands that start with `prefix` (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[len(prefix.split()):] for line in lines if line.startswith(prefix + " ")]


def test_readme_train_commands_name_real_settings():
    commands = readme_commands("just train")
    assert len(commands) >= 4
    for args in commands:
        parsed = cli.parser().parse_args(args)  # an unknown flag exits here
        if not parsed.resume:  # resuming reads a run directory that does not exist here
            cli.config_from_args(parsed)


def test_readme_torchrun_commands_start_the_trainer_with_real_settings():
    commands = readme_commands("torchrun")
    assert len(commands) >= 3
    for args in commands:
        module = args.index("-m")
        assert args[module + 1] == "pipelines.training.cli"
        cli.config_from_args(cli.parser().parse_args(args[module + 2 :]))


def test_readme_sweep_commands_name_real_settings():
    commands = readme_commands("just sweep")
    assert commands
    for args in commands:
        parsed = sweep.parser().parse_args(args)
        make_variants(parsed.vary, parsed.variant)
        parse_overrides(parsed.set)
