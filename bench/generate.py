"""Generation with the KV cache against recomputing the whole window for every new token.

Both paths draw the same tokens (tests/test_generate.py); this measures what the cache saves:
each new token costs one position through the model instead of the whole prefix.

    just bench generate                  # cpu-small-shaped model, 256-token context
    just bench generate --new_tokens 500 # past the context: the window slides (cache rebuilt)
"""

import sys
import time
from collections.abc import Sequence

import torch

from bench.common import add_model_arguments, bench_parser, model_config, print_table
from core.sampling import generate
from params.init import init_params
from pipelines.command import command
from pipelines.flags import CommandParser, integer


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "generate")
    add_model_arguments(parser, context=256, d_model=128, heads=4, vocab=2048)
    parser.add_argument("--prompt_tokens", type=integer(1), default=8)
    parser.add_argument("--new_tokens", type=integer(1), default=240)
    parser.add_argument("--repeats", type=integer(1), default=3)
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)

    config = model_config(args)
    params = init_params(config, torch.Generator().manual_seed(0))
    prompt = list(range(1, args.prompt_tokens + 1))

    def run(use_cache: bool) -> tuple[float, list[int]]:
        best, tokens = float("inf"), []
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = generate(params, config, prompt, args.new_tokens, temperature=0.8, top_p=0.95,
                              generator=torch.Generator().manual_seed(0), use_cache=use_cache)
            best = min(best, time.perf_counter() - start)
        return best, tokens

    print(f"config: {config}\nprompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}\n")
    cached_seconds, cached_tokens = run(use_cache=True)
    plain_seconds, plain_tokens = run(use_cache=False)
    assert cached_tokens == plain_tokens, "the two paths drew different tokens"
    rows = [
        ("cache-free (full forward per token)", f"{plain_seconds:.2f}", f"{args.new_tokens / plain_seconds:,.0f}", "1.00"),
        ("KV cache", f"{cached_seconds:.2f}", f"{args.new_tokens / cached_seconds:,.0f}", f"{plain_seconds / cached_seconds:.2f}"),
    ]
    print_table(rows, ("variant", "seconds", "tokens/s", "speed-up"))


if __name__ == "__main__":
    sys.exit(main())
