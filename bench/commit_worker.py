"""One side of `just bench commits`: builds a benchmark's variants from the files it runs among,
then times one call at a time on its coordinator's word.

Run by path (`python -P bench/commit_worker.py SPEC`) with PYTHONPATH at a side's folder, so that
`core`, `params`, `pipelines` and `bench` are that side's: nothing here imports the project at
module level, because the side may be an old commit. SPEC is JSON: {"bench": "train", "shape":
"cpu-small", "compile": true} or {"bench": "sweep", "d_model": 128, "batch": 8, "steps": 3}.

Protocol, one line each: the worker prints the JSON list of its variants' names once they are
built and warmed up; then each line it reads names a variant, which it calls once and answers
with the seconds the call took; an empty line or end of input ends it.
"""

import json
import sys
import time
from collections.abc import Callable


def train_variants(spec: dict) -> dict[str, Callable[[], object]]:
    """bench/train.py's step functions (the expert peer's among them) at spec's shape."""
    import torch

    from bench.common import SHAPES
    from bench.train import variants
    from core.config import ModelConfig

    fields, batch_size = SHAPES[spec["shape"]]
    config = ModelConfig(**fields)
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, config.vocab_size, (batch_size, config.context_length), generator=generator) for _ in range(2))
    return {name: make() for name, make in variants(config, (x, y), compile=spec["compile"]).items()}


def sweep_variants(spec: dict) -> dict[str, Callable[[], object]]:
    """bench/sweep.py's one-process arrangements: the 8 runs stacked, and one after another."""
    import argparse

    from bench import sweep

    args = argparse.Namespace(vocab=2048, context=128, layers=4, heads=4, batch=spec["batch"], device="cpu")
    config, data, device = sweep._setup(args, spec["d_model"])
    vectorised = sweep.Vectorised(config, data, args.batch, device)
    sequential = sweep.Runs(config, data, args.batch, device, 0, sweep.VARIANTS)
    steps = spec["steps"]
    return {f"{sweep.VECTORISED} ({steps} steps)": lambda: vectorised.train(steps),
            f"{sweep.SEQUENTIAL} ({steps} steps)": lambda: sequential.train(steps)}


BUILDERS = {"train": train_variants, "sweep": sweep_variants}


def serve(fns: dict[str, Callable[[], object]]) -> None:
    for fn in fns.values():  # warm-up: compilation, first-touch allocation
        fn()
        fn()
    print(json.dumps(list(fns)), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            return
        start = time.perf_counter()
        fns[name]()
        print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    serve(BUILDERS[spec["bench"]](spec))
