"""Split one text file into train.txt and valid.txt, for a corpus that comes as a single file
(the shared OpenWebText sample, `../shared/data/owt_sample.txt`):

    python -m pipelines.experiments.split_text ../shared/data/owt_sample.txt --valid_fraction 0.1 --out cache/owt-sample

The last `--valid_fraction` of the bytes become valid.txt, cut at the paragraph break (a blank
line) nearest that point so no paragraph is in both; the rest is train.txt. The files are what
`--data.path DIR` reads. Nothing is written when --out already holds them, unless --force.
"""

import sys
from argparse import RawDescriptionHelpFormatter
from collections.abc import Sequence
from pathlib import Path

from core.errors import UsageError
from pipelines.command import command
from pipelines.flags import CommandParser, number
from pipelines.files.atomic import write_atomic

BREAK = b"\n\n"


def split_point(data: bytes, valid_fraction: float) -> int:
    """The offset where valid begins: just past the paragraph break nearest to the wanted share."""
    if not 0 < valid_fraction < 1:
        raise UsageError(f"--valid_fraction must lie in (0, 1), got {valid_fraction}")
    wanted = round(len(data) * (1 - valid_fraction))
    before, after = data.rfind(BREAK, 0, wanted), data.find(BREAK, wanted)
    candidates = [at + len(BREAK) for at in (before, after) if at > 0 and at + len(BREAK) < len(data)]
    if not candidates:
        raise UsageError("the text has no paragraph break (blank line) to cut at")
    return min(candidates, key=lambda at: abs(at - wanted))


def split_text(source: Path, out: Path, valid_fraction: float = 0.1, force: bool = False) -> tuple[Path, Path]:
    train, valid = out / "train.txt", out / "valid.txt"
    if not force and (train.exists() or valid.exists()):
        raise UsageError(f"{out} already holds train.txt or valid.txt; pass --force to replace them")
    if out.resolve() == source.parent.resolve():
        raise UsageError(f"--out {out} is the source's own folder; pick another")
    if not source.is_file():
        raise UsageError(f"{source} is not a file")
    data = source.read_bytes()
    cut = split_point(data, valid_fraction)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(train, data[:cut])
    write_atomic(valid, data[cut:])
    return train, valid


def parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m pipelines.experiments.split_text", description=__doc__.split("\n\n")[0],
        formatter_class=RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("source", type=Path, help="the text file to split")
    parser.add_argument("--out", type=Path, required=True, help="folder for train.txt and valid.txt")
    parser.add_argument("--valid_fraction", type=number(0, 1, open_low=True), default=0.1,
                        help="share of the bytes for valid.txt, in (0, 1) (default 0.1)")
    parser.add_argument("--force", action="store_true", help="replace train.txt and valid.txt in --out")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    train, valid = split_text(args.source, args.out, args.valid_fraction, args.force)
    print(f"{train}: {train.stat().st_size:,} bytes; {valid}: {valid.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
