"""Every number of every command is checked before any work (issue: "every number is checked").

Hypothesis draws a command, one of its numeric flags and a value from the edges (0, negative,
infinite, NaN, huge, beyond 64 bits, not a number at all, and a few ordinary ones), runs the
command's `main(argv)` in this process from an empty working folder, and asserts one of two
outcomes: a one-line refusal (`error: ...`, exit 2, no traceback) that wrote nothing, or a run
that works. Anything else (a traceback, a second line, a file written before the refusal) fails.
CASES gives each command its flags and a working command line by hand; every recipe of the
justfile (tests/commands.py) whose parser reads a number must have one.

Commands whose accepted runs are slow (training, sweeps, benchmarks, the tokenizer report) are
checked up to the point where their work begins in the default suite; the slow version runs
the trainer to the end on the bounded values it accepts.
"""

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import UsageError
from pipelines.training.config.config import field_types
from pipelines.training.hardware.fits import check_fits
from tests.commands import command_module, recipe_modules
from tests.inputs import EOT

EDGES = ["0", "-1", "-3", "0.5", "1", "2", "3", "1.5", "1e-300", "1e10", "1e400", "inf", "-inf", "nan",
         str(2**31), str(2**63), str(10**23), "abc", ""]
TINY_TRAIN = {
    "model.vocab_size": "300", "model.context_length": "8", "model.d_model": "16", "model.num_layers": "1",
    "model.num_heads": "2", "data.batch_size": "2", "schedule.warmup_steps": "1", "max_steps": "2", "log_every": "1",
    "eval.every": "2", "eval.windows": "2", "checkpoint_every": "2", "sample.count": "0",
}
NUMERIC_SETTINGS = sorted(name for name, kind in field_types().items() if {int, float} & {kind, *getattr(kind, "__args__", ())})


@dataclass(frozen=True)
class Case:
    flags: tuple[str, ...]  # the numeric flags to draw
    argv: Callable[[dict, Path], list[str]]  # a working command line, given the shared inputs and an output folder
    runs: bool = True  # an accepted draw is run to its end in the default suite (else checked up to its work)


def train_argv(inputs: dict, out: Path) -> list[str]:
    settings = [item for name, value in TINY_TRAIN.items() for item in (f"--{name}", value)]
    return ["tinystories", "--preset", "cpu-small", "--data.path", str(inputs["tokens"]), "--run_dir", str(out / "run"), *settings]


CASES = {
    "train": Case(tuple(f"--{name}" for name in NUMERIC_SETTINGS), train_argv, runs=False),
    "generate": Case(("--sample.tokens", "--sample.temperature", "--sample.top_p", "--sample.count", "--seed"),
                     lambda inputs, out: ["--run", str(inputs["run"]), "--sample.tokens", "3"]),
    "train-tokenizer": Case(("--model.vocab_size", "--workers"),
                            lambda inputs, out: [str(inputs["text"]), "--model.vocab_size", "300", "--out", str(out / "tok")]),
    "tokenize": Case(("--workers",), lambda inputs, out: [str(inputs["text"]), "--tokenizer", str(inputs["tokenizer"]),
                                                          "--out", str(out / "ids.npy")]),
    "accounting": Case(("--max_steps", "--data.batch_size", "--peak_flops", "--mfu", "--budget_hours", "--model.d_model",
                        "--model.num_layers", "--model.rope_theta"), lambda inputs, out: ["--preset", "tinystories/cpu-small"]),
    "split-text": Case(("--valid_fraction",), lambda inputs, out: [str(inputs["text"]), "--out", str(out / "split")]),
    "sweep": Case(("--jobs", "--threads"), lambda inputs, out: ["tinystories/cpu-small", "--out", str(out / "sweep")], runs=False),
    "tokenizer-report": Case(("--samples", "--seed"), lambda inputs, out: ["--data.path", str(inputs["text"].parent)], runs=False),
    "bench commits": Case(("--batch", "--d_model", "--repeats", "--steps"), lambda inputs, out: ["--base", "HEAD"], runs=False),
    "bench generate": Case(("--model.context_length", "--model.d_model", "--model.num_heads", "--model.num_layers",
                            "--model.vocab_size", "--new_tokens", "--prompt_tokens", "--repeats"), lambda inputs, out: [], runs=False),
    "bench gpu": Case(("--curve_steps", "--steps"), lambda inputs, out: [], runs=False),
    "bench model": Case(("--batch", "--model.context_length", "--model.d_model", "--model.num_heads", "--model.num_layers",
                         "--model.vocab_size", "--repeats"), lambda inputs, out: [], runs=False),
    "bench optimizer": Case(("--model.context_length", "--model.d_model", "--model.num_heads", "--model.num_layers",
                             "--model.vocab_size", "--repeats", "--threads"), lambda inputs, out: [], runs=False),
    "bench train": Case(("--batch", "--repeats"), lambda inputs, out: [], runs=False),
    "bench ddp": Case(("--batch", "--steps", "--bucket_mb"), lambda inputs, out: [], runs=False),
    "bench sweep": Case(("--model.num_layers", "--model.vocab_size", "--batch", "--steps", "--d_models", "--threads"),
                        lambda inputs, out: [], runs=False),
}


def numeric_flags(recipe: str) -> list[str]:
    """The command's flags whose values its parser reads as numbers (pipelines/flags.py's integer,
    integers and number types, or plain int and float)."""
    actions = command_module(recipe).parser()._actions
    numeric = [action for action in actions
               if action.type in (int, float) or getattr(action.type, "__name__", None) in ("integer", "integers", "number")]
    return sorted(flag for action in numeric for flag in action.option_strings if flag.startswith("--"))


def test_every_command_with_numeric_flags_has_its_case():
    missing = {recipe: flags for recipe in recipe_modules() if recipe not in CASES and (flags := numeric_flags(recipe))}
    assert not missing, f"commands whose numbers no case draws (add them to CASES): {missing}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A text, its tokenizer and token files, and a two-step run: what the commands read."""
    from pipelines.tokenizer.encode import encode_file
    from pipelines.tokenizer.train import train_tokenizer
    from pipelines.training.cli import main as train

    root = tmp_path_factory.mktemp("inputs")
    text = root / "text" / "train.txt"
    text.parent.mkdir()
    text.write_text("".join(f"Once upon a time there was a cat number {i}.\n\n" for i in range(300)))
    tokenizer = train_tokenizer(text, 300, [EOT], root / "tok")
    tokens = root / "tokens"
    tokens.mkdir()
    for split in ("train", "valid"):
        encode_file(text, tokenizer, tokens / f"{split}.npy")
    (tokens / "tokenizer").symlink_to(tokenizer)
    run = root / "out"
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        assert train(train_argv({"tokens": tokens}, run)) == 0
    return {"text": text, "tokenizer": tokenizer, "tokens": tokens, "run": run / "run"}


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


def bounded(value: str) -> bool:
    """A value small enough that an accepted run of it ends in seconds."""
    try:
        number = float(value)
    except ValueError:
        return True
    return math.isfinite(number) and abs(number) <= 3


def checked_before_work(recipe: str, argv: list[str]) -> None:
    """The command's own checks, stopping where its work would begin (for the slow commands)."""
    module = command_module(recipe)
    args = module.parser().parse_args(argv)
    if recipe == "train":
        check_fits(module.config_from_args(args), torch.device("cpu"))
    elif recipe == "sweep":
        threads, _ = module.threads_per_variant(args.threads, args.jobs)
        assert threads >= 1


def outcome(recipe: str, argv: list[str], out: Path, runs: bool, capsys) -> str:
    """The refusal's line, or "worked"; fails the test on anything else."""
    before = files_under(out)
    capsys.readouterr()
    try:
        with inside(out):
            if runs:
                command_module(recipe).main(argv)
            else:
                try:
                    checked_before_work(recipe, argv)
                except UsageError as error:  # as the command's ending would print it
                    print(f"error: {error}", file=sys.stderr)
                    raise SystemExit(2) from None
    except SystemExit as ended:
        if ended.code in (0, None):
            return "worked"
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
        assert ended.code == 2, (recipe, argv, ended.code, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (recipe, argv, err)
        assert files_under(out) == before, (recipe, argv, "wrote before refusing")
        return lines[0]
    return "worked"


def check_draw(recipe: str, flag: str, value: str, inputs: dict, tmp_path_factory, capsys, run_all: bool) -> None:
    case = CASES[recipe]
    out = tmp_path_factory.mktemp("out")
    argv = [*case.argv(inputs, out), flag, value]
    runs = (case.runs or run_all and recipe == "train") and bounded(value)
    outcome(recipe, argv, out, runs, capsys)


draws = st.sampled_from(sorted(CASES)).flatmap(
    lambda recipe: st.tuples(st.just(recipe), st.sampled_from(CASES[recipe].flags), st.sampled_from(EDGES)))


@given(draw=draws)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_number_is_refused_in_one_line_or_works(draw, inputs, tmp_path_factory, capsys):
    check_draw(*draw, inputs, tmp_path_factory, capsys, run_all=False)


@pytest.mark.slow
@given(draw=draws)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_number_is_refused_in_one_line_or_works_long(draw, inputs, tmp_path_factory, capsys):
    check_draw(*draw, inputs, tmp_path_factory, capsys, run_all=True)


@pytest.mark.parametrize("recipe, argv, message", [
    ("train", ["--optim.eps", "inf"], "optim.eps must be a finite number"),
    ("train", ["--schedule.lr", "inf"], "schedule.lr must be a finite number"),
    ("train", ["--eval.every", str(10**23)], "eval.every must fit in a 64-bit integer"),
    ("train", ["--grad_accum", "1000000000"], "x grad_accum 1000000000"),
    ("train-tokenizer", ["--model.vocab_size", "10000000000"], "--model.vocab_size: must be an integer from 256 to"),
    ("tokenize", ["--workers", "-3"], "--workers: must be an integer from 1 to"),
    ("tokenize", ["--workers", "0"], "--workers: must be an integer from 1 to"),
    ("accounting", ["--mfu", "0"], "--mfu: must be a finite number above 0"),
    ("accounting", ["--max_steps", "0"], "--max_steps: must be an integer >= 1"),
    ("accounting", ["--peak_flops", "0"], "--peak_flops: must be a finite number above 0"),
    ("accounting", ["--chip", "Z80"], "--chip 'Z80': unknown"),
    ("accounting", ["--budget_hours", "-1"], "--budget_hours: must be a finite number above 0"),
    ("bench sweep", ["--d_models", "abc"], "--d_models: expects an integer, got 'abc'"),
    ("bench sweep", ["--threads", "0"], "--threads: must be an integer from 1 to 4096, got 0"),
])
def test_the_reported_cases_are_refused_in_one_line(recipe, argv, message, inputs, tmp_path, capsys):
    case = CASES[recipe]
    argv = [*case.argv(inputs, tmp_path), *argv]
    refusal = outcome(recipe, argv, tmp_path, runs=recipe != "train", capsys=capsys)
    assert refusal.startswith("error: ") and message in refusal


def test_the_memory_estimate_counts_gradient_accumulation():
    from pipelines.training.config.config import resolve_config
    from pipelines.training.hardware.fits import batch_bytes, training_bytes

    one = resolve_config("tinystories", "cpu-small")
    many = resolve_config("tinystories", "cpu-small", {"grad_accum": 1000})
    assert batch_bytes(many) == 1000 * batch_bytes(one)
    assert training_bytes(many) - training_bytes(one) == 999 * batch_bytes(one)
    assert batch_bytes(one) == 4 * 8 * 32 * 129  # four int64 copies of 32 windows of 128 + 1 tokens
