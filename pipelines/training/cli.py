"""`python -m pipelines.training.cli [DATASET] [--preset NAME] [--schedule.lr 3e-3 ...]`: train.

Every TrainConfig setting is a flag named by its dotted path (`--model.d_model 256`,
`--data.path ../shared/data`; dashes work too, pipelines/flags.py); `--set NAME=VALUE` takes the
same names. Without --preset, the preset fits the device: the handout's baseline on CUDA,
cpu-small elsewhere. A refusal of the input is one line (pipelines/command.py), before any work.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import UsageError
from pipelines.command import EXIT_INTERRUPTED, command
from pipelines.flags import CommandParser, integer
from pipelines.training.config.config import TrainConfig, field_types, parse_overrides, resolve_config
from pipelines.training.distributed.launch import launch
from pipelines.training.hardware.device_check import require_device
from pipelines.training.hardware.malloc import keep_freed_memory
from pipelines.training.distributed.processes import launched_by_torchrun
from pipelines.training.distributed.worker import become_worker
from pipelines.training.run.loop import run_training
from pipelines.training.config.presets import preset_for_device
from pipelines.training.storage.run_dir import CONFIG_FILE

EXIT_CODES = {"completed": 0, "interrupted": EXIT_INTERRUPTED, "diverged": 1, "failed": 1}


def parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m pipelines.training.cli",
        description="Train a Transformer LM. Config: preset < --config FILE < flags and --set.",
    )
    parser.add_argument("dataset", nargs="?", default="tinystories", help="dataset whose presets to use: tinystories or owt")
    parser.add_argument("--preset", help="baseline (the handout's) or cpu-small; default: the one that fits the device")
    parser.add_argument("--config", help="a JSON config (e.g. a run's config.json) applied over the preset")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run_dir from checkpoints/last.pt")
    parser.add_argument("--nproc", type=integer(1, 4096), help="data-parallel processes on this machine, started by torchrun --standalone")
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


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Train; the exit code says how the run ended (EXIT_CODES). A refusal of the input (a bad
    setting, missing data, a busy run directory) is a UsageError, printed in one line by @command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if launched_by_torchrun():
        become_worker()  # stop with the launcher; only the main process prints
    args = parser().parse_args(argv)
    config = config_from_args(args)
    try:
        if args.nproc and args.nproc > 1 and not launched_by_torchrun():
            return launch(config, args.nproc, resume=args.resume)
        keep_freed_memory()  # the step's buffers stay in the process: no page faults for them on every step
        run_dir, status = run_training(config, resume=args.resume)
    except RuntimeError as error:  # under torchrun: gloo/NCCL report a dead or hanging peer this way
        if not launched_by_torchrun():
            raise
        rank = os.environ["RANK"]
        print(f"error: process {rank}: another process of this run failed or stopped answering ({str(error).splitlines()[0][:200]})",
              file=sys.stderr)
        return 1
    if status == "interrupted" and int(os.environ.get("RANK", "0")) == 0:
        print(f"resume with: just train --resume --run_dir {run_dir}", file=sys.stderr)
    return EXIT_CODES[status]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the parsed command line asks for: preset < --config (or, resuming, the run's
    config.json) < flags and --set."""
    flags = [(name, value) for name, value in vars(args).items() if name in field_types()]
    overrides = parse_overrides([*flags, *args.set])
    if args.resume and "run_dir" not in overrides:
        raise UsageError("--resume needs --run_dir DIR")
    config_file = args.config or (Path(overrides["run_dir"]) / CONFIG_FILE if args.resume else None)
    # A config file is a whole config (a run's config.json): the preset under it hardly matters.
    if args.preset or config_file:
        preset, notice = args.preset or "baseline", None
    else:
        preset, notice = preset_for_device(require_device(overrides.get("device", "auto")).type)
    config = resolve_config(args.dataset, preset, overrides, config_file=config_file)
    if notice:  # only for a config that stands: a refusal stays one line
        print(notice, file=sys.stderr)
    return config


if __name__ == "__main__":
    sys.exit(main())
