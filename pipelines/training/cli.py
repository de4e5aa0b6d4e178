"""`python -m pipelines.training.cli [DATASET] [--preset NAME] [--schedule.lr 3e-3 ...]`: train.

Every TrainConfig setting is a flag named by its dotted path (`--model.d_model 256`,
`--data.path ../shared/data`); `--set NAME=VALUE` takes the same names. Without --preset, the
preset fits the device: the handout's baseline on CUDA, cpu-small elsewhere.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from pipelines.training.config import TrainConfig, field_types, parse_overrides, resolve_config
from pipelines.training.device import select_device
from pipelines.training.loop import train
from pipelines.training.presets import preset_for_device
from pipelines.training.run_dir import CONFIG_FILE, SUMMARY_FILE

EXIT_CODES = {"completed": 0, "interrupted": 130, "diverged": 1, "failed": 1}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.training.cli",
        description="Train a Transformer LM. Config: preset < --config FILE < flags and --set.",
    )
    parser.add_argument("dataset", nargs="?", default="tinystories", help="dataset whose presets to use (tinystories)")
    parser.add_argument("--preset", help="baseline (the handout's) or cpu-small; default: the one that fits the device")
    parser.add_argument("--config", help="a JSON config (e.g. a run's config.json) applied over the preset")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run_dir from checkpoints/last.pt")
    group = parser.add_argument_group("config settings (override the preset)")
    for name, annotation in field_types().items():
        if name == "dataset":  # the positional argument
            continue
        if annotation is bool:  # `--compile` alone means true
            group.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS, metavar="BOOL", nargs="?", const="true")
        else:
            group.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS, metavar="VALUE")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override any setting by name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:  # one line: argparse's error() would add the long usage
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        run_dir = train(config, resume=args.resume)
    except (OSError, ValueError, ImportError) as error:  # missing data, occupied run dir, bad tokens...
        print(f"error: {error}", file=sys.stderr)
        return 1
    status = orjson.loads((run_dir / SUMMARY_FILE).read_bytes())["status"]
    if status == "interrupted":
        print(f"resume with: just train --resume --run_dir {run_dir}", file=sys.stderr)
    return EXIT_CODES[status]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the parsed command line asks for: preset < --config (or, resuming, the run's
    config.json) < flags and --set."""
    flags = [(name, value) for name, value in vars(args).items() if name in field_types()]
    overrides = parse_overrides([*flags, *args.set])
    if args.resume and "run_dir" not in overrides:
        raise ValueError("--resume needs --run_dir DIR")
    config_file = args.config or (Path(overrides["run_dir"]) / CONFIG_FILE if args.resume else None)
    # A config file is a whole config (a run's config.json): the preset under it hardly matters.
    preset = args.preset or ("baseline" if config_file else _preset_for(overrides))
    return resolve_config(args.dataset, preset, overrides, config_file=config_file)


def _preset_for(overrides: dict) -> str:
    preset, notice = preset_for_device(select_device(overrides.get("device", "auto")).type)
    if notice:
        print(notice, file=sys.stderr)
    return preset


if __name__ == "__main__":
    sys.exit(main())
