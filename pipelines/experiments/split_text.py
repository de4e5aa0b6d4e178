"""Split one text file into train.txt and valid.txt, for a corpus that comes as a single file
(the shared OpenWebText sample, `../shared/data/owt_sample.txt`):

    python -m pipelines.experiments.split_text ../shared/data/owt_sample.txt --valid-fraction 0.1 --out cache/owt-sample

The last `--valid-fraction` of the bytes become valid.txt, cut at the paragraph break (a blank
line) nearest that point so no paragraph is in both; the rest is train.txt. The files are what
`--data.path DIR` reads. Nothing is written when --out already holds them, unless --force.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.files.atomic import write_atomic

BREAK = b"\n\n"


def split_point(data: bytes, valid_fraction: float) -> int:
    """The offset where valid begins: just past the paragraph break nearest to the wanted share."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"--valid-fraction must lie in (0, 1), got {valid_fraction}")
    wanted = round(len(data) * (1 - valid_fraction))
    before, after = data.rfind(BREAK, 0, wanted), data.find(BREAK, wanted)
    candidates = [at + len(BREAK) for at in (before, after) if at > 0 and at + len(BREAK) < len(data)]
    if not candidates:
        raise ValueError("the text has no paragraph break (blank line) to cut at")
    return min(candidates, key=lambda at: abs(at - wanted))


def split_text(source: Path, out: Path, valid_fraction: float = 0.1, force: bool = False) -> tuple[Path, Path]:
    train, valid = out / "train.txt", out / "valid.txt"
    if not force and (train.exists() or valid.exists()):
        raise FileExistsError(f"{out} already holds train.txt or valid.txt; pass --force to replace them")
    if out.resolve() == source.parent.resolve():
        raise ValueError(f"--out {out} is the source's own folder; pick another")
    data = source.read_bytes()
    cut = split_point(data, valid_fraction)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(train, data[:cut])
    write_atomic(valid, data[cut:])
    return train, valid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.experiments.split_text", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("source", type=Path, help="the text file to split")
    parser.add_argument("--out", type=Path, required=True, help="folder for train.txt and valid.txt")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="share of the bytes for valid.txt (default 0.1)")
    parser.add_argument("--force", action="store_true", help="replace train.txt and valid.txt in --out")
    args = parser.parse_args(argv)
    try:
        train, valid = split_text(args.source, args.out, args.valid_fraction, args.force)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{train}: {train.stat().st_size:,} bytes; {valid}: {valid.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
