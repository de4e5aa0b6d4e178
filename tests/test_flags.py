"""One flag style across every command (pipelines/flags.py): each command's parser spells its
flags with underscores and the trainer's dotted names, takes dashes for underscores alike, and
answers an unknown flag or a bad value in one line naming it, never with argparse's usage dump."""

import subprocess
import sys

import pytest

from core.errors import UsageError
from pipelines.flags import CommandParser, canonical, closest, integer, integers, number
from tests.commands import ROOT, command_module, recipe_modules

RECIPES = sorted(recipe_modules())


def dashed(flag: str) -> str:
    return "--" + flag[2:].replace("_", "-")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_command_spells_its_flags_one_way_and_takes_dashes_alike(recipe):
    parser = command_module(recipe).parser()
    assert isinstance(parser, CommandParser)
    flags = [flag for flag in parser.flags() if flag != "--help"]
    assert all(flag == canonical(flag) for flag in flags), flags
    assert "-" not in "".join(flag[2:] for flag in flags)
    for flag in flags:
        assert parser._respelled([dashed(flag), "v", f"{dashed(flag)}=w"]) == [flag, "v", f"{flag}=w"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_command_answers_an_unknown_flag_in_one_line_with_the_closest_ones(recipe):
    parser = command_module(recipe).parser()
    with pytest.raises(UsageError, match=r"^unknown flag --no_such_setting_at_all; ") as refused:
        parser.parse_args(["--no-such-setting-at-all", "3"])
    assert "\n" not in str(refused.value)
    flags = [flag for flag in parser.flags() if flag != "--help"]
    if flags:  # a near miss is answered with what was meant
        longest = max(flags, key=len)
        with pytest.raises(UsageError, match=rf"did you mean [^\n]*{longest}\b"):
            parser.parse_args([dashed(longest[:-1]), "1"])


def test_the_same_value_whichever_spelling():
    from pipelines.experiments import accounting, split_text
    from pipelines.generate import parser as generate_parser
    from pipelines.training.cli import parser as train_parser

    assert vars(train_parser().parse_args(["--max-steps", "7", "--sample.top-p=0.5"])) == vars(
        train_parser().parse_args(["--max_steps", "7", "--sample.top_p=0.5"]))
    underscored = generate_parser().parse_args(["--run", "r", "--sample.top_p", "0.5", "--sample.tokens", "9"])
    assert vars(generate_parser().parse_args(["--run", "r", "--sample.top-p", "0.5", "--sample.tokens", "9"])) == vars(underscored)
    assert accounting.parser().parse_args(["--peak-flops", "1e12"]).peak_flops == 1e12
    assert split_text.parser().parse_args(["x", "--out", "y", "--valid-fraction", "0.25"]).valid_fraction == 0.25


def test_values_that_look_like_flags_are_left_alone():
    from pipelines.generate import parser as generate_parser

    # `--x-y` after `--` is a value, and a prompt may hold dashes: neither is respelled.
    args = generate_parser().parse_args(["--run", "r", "--sample.prompt=--so-it-begins"])
    assert args.prompt == "--so-it-begins"


@pytest.mark.parametrize("text, message", [
    ("abc", "expects an integer"), ("1.5", "expects an integer"), ("0", "must be an integer >= 1"),
    ("-3", "must be an integer >= 1"), (str(2**63), "must be an integer >= 1"),
])
def test_integer_flags_refuse_what_is_not_a_count(text, message):
    with pytest.raises(Exception, match=message):
        integer(1)(text)


@pytest.mark.parametrize("text, message", [
    ("abc", "expects an integer, got 'abc'"), ("64,,128", "expects an integer, got ''"), ("", "expects an integer"),
    ("1,0", "must be an integer >= 1, got 0"),
])
def test_integer_list_flags_check_every_part(text, message):
    with pytest.raises(Exception, match=message):
        integers(1)(text)
    assert integers(1)("64, 128,256") == [64, 128, 256]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "1.5", "x", "1e400"])
def test_number_flags_refuse_what_is_not_finite_and_in_range(text):
    with pytest.raises(Exception, match="must be a finite number|expects a number"):
        number(0, 1, open_low=True)(text)
    assert number(0, 1, open_low=True)("0.5") == 0.5


def test_closest_matches_whole_names_and_their_last_part():
    known = ["--max_steps", "--sample.top_p", "--model.vocab_size", "--seed"]
    assert closest("--top_p", known)[0] == "--sample.top_p"
    assert closest("--vocab_size", known)[0] == "--model.vocab_size"
    assert closest("--zzz", known) == []


def test_a_misspelled_flag_through_the_real_command_line_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "pipelines.generate", "--run", "r", "--max-tokens", "20"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown flag --max_tokens; did you mean --sample.tokens?"
