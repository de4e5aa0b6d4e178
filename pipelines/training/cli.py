"""`python -m pipelines.training.cli [DATASET] [--preset NAME] [--schedule.lr 3e-3 ...]`: train.

Every TrainConfig setting is a flag named by its dotted path (`--model.d_model 256`,
`--data.path ../shared/data`); `--set NAME=VALUE` takes the same names. Without --preset, the
preset fits the device: the handout's baseline on CUDA, cpu-small elsewhere.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


from pipelines.training.config.config import TrainConfig, field_types, parse_overrides, resolve_config
from pipelines.training.hardware.device import select_device
from pipelines.training.hardware.malloc import keep_freed_memory
from pipelines.training.distributed.processes import launched_by_torchrun
from pipelines.training.run.loop import run_training
from pipelines.training.config.presets import preset_for_device
from pipelines.training.storage.run_dir import CONFIG_FILE

EXIT_CODES = {"completed": 0, "interrupted": 130, "diverged": 1, "failed": 1}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.training.cli",
        description="Train a Transformer LM. Config: preset < --config FILE < flags and --set.",
    )
    parser.add_argument("dataset", nargs="?", default="tinystories", help="dataset whose presets to use: tinystories or owt")
    parser.add_argument("--preset", help="baseline (the handout's) or cpu-small; default: the one that fits the device")
    parser.add_argument("--config", help="a JSON config (e.g. a run's config.json) applied over the preset")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run_dir from checkpoints/last.pt")
    parser.add_argument("--nproc", type=int, help="data-parallel processes on this machine, started by torchrun --standalone")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.nproc is not None and args.nproc < 1:
        print(f"error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:  # one line: argparse's error() would add the long usage
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.nproc and args.nproc > 1 and not launched_by_torchrun():
        _run_under_torchrun(args.nproc, argv)  # does not return
    keep_freed_memory()  # the step's buffers stay in the process: no page faults for them on every step
    try:
        run_dir, status = run_training(config, resume=args.resume)
    except (OSError, ValueError, ImportError) as error:  # missing data, occupied run dir, bad tokens...
        print(f"error: {error}", file=sys.stderr)
        return 1
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


def _run_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by torchrun starting `nproc` of these trainers on this machine."""
    rest = [arg for i, arg in enumerate(argv) if not (arg.startswith("--nproc") or (i > 0 and argv[i - 1] == "--nproc"))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pipelines.training.cli", *rest]
    print(f"starting {nproc} processes: torchrun --standalone --nproc_per_node={nproc} -m pipelines.training.cli ...", file=sys.stderr)
    sys.stderr.flush()
    os.execv(sys.executable, command)


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
