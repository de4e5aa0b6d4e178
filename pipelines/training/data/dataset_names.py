"""Which dataset a data file's name says it holds, so a run's dataset and its data agree.

The dataset (`just train tinystories` or `just train owt`) picks the presets made for its text: the
vocabulary size, the sample prompt. A run of one dataset on files named for the other
(`owt` on `tinystories_train.txt`) would train the wrong model without a word, so it is refused in
one line. Files named for no dataset (`train.txt`, `valid.txt`) are taken as they are: renaming
the files is the explicit way to train one dataset's presets on other text.

It also knows where each dataset's small local sample is (in `$LMKIT_SHARED/data`, default
`../shared/data`) and the command that makes it readable, for the hint a run prints offline.
"""

import os
import re
from pathlib import Path

from core.errors import UsageError

# The words in a file name that say which dataset it is (compared with the name's parts split at
# '-', '_', '.' and spaces, lower-cased: `TinyStoriesV2-GPT4-train.txt` says tinystories).
NAME_WORDS = {"tinystories": ("tinystories", "tinystoriesv2"), "owt": ("owt", "openwebtext")}


def dataset_named_by(path: Path | str) -> str | None:
    """The dataset whose name `path`'s file name carries, or None."""
    parts = set(re.split(r"[-_.\s]+", Path(path).name.lower()))
    named = [dataset for dataset, words in NAME_WORDS.items() if parts & set(words)]
    return named[0] if len(named) == 1 else None


def check_dataset_matches(dataset: str, *files: Path | None) -> None:
    """UsageError when a file the run will read is named for another dataset than `dataset`."""
    for path in files:
        named = dataset_named_by(path) if path is not None else None
        if named is not None and named != dataset:
            raise UsageError(
                f"--data.path: {path} is named for the {named} dataset but this run's dataset is {dataset}; "
                f"run `just train {named} ...`, or rename the files train.txt / valid.txt to train {dataset}'s presets on them"
            )


def local_sample_hint(file_name: str) -> str:
    """" For a small local sample: ..." for the dataset `file_name` belongs to, when that sample is
    on this machine; "" otherwise."""
    data = Path(os.environ.get("LMKIT_SHARED", "../shared")) / "data"
    dataset = dataset_named_by(file_name)
    if dataset == "tinystories" and (data / "tinystories_train.txt").is_file():
        return f" For a small local sample: --data.path {data}"
    if dataset == "owt" and (data / "owt_sample.txt").is_file():
        return f" For a small local sample: just split-text {data / 'owt_sample.txt'} --out cache/owt-sample, then --data.path cache/owt-sample"
    return ""
