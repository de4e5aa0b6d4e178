"""One optimizer update: core.optim's pure chain against torch's in-place clipping and AdamW.

Ours: `chain(clip_by_global_norm(1.0), adamw(..., mask=decay_matrices))` then `apply_updates`,
returning new parameters and state, and the same donated (in place, as the trainer runs it). Peer: `torch.nn.utils.clip_grad_norm_(foreach=True)` and
`torch.optim.AdamW(foreach=True)` with the same two param groups (matrices decayed, 1-D gains
not), updating in place. Same gradients every call, on the cpu-small model's parameter pytree.
Prints ms per update and the speed ratio (above 1.0: ours is faster).

    just bench optimizer
    just bench optimizer --malloc_keep   # glibc keeps freed memory: no page faults for new buffers

A pure update allocates its results (parameters, moments, intermediates) where torch writes in
place. glibc hands large freed blocks back to the system, so fresh buffers cost page faults (about
760 per update here, and 1,200 for torch's, whose sqrt allocates too); --malloc_keep raises glibc's
thresholds (mallopt) so that none occur, to measure what they cost.
"""

import sys
from collections.abc import Sequence

import torch

from bench.common import add_model_arguments, bench_parser, model_config, print_table, time_interleaved
from core.optim import adamw, apply_updates, chain, clip_by_global_norm, decay_matrices, foreach
from core.tree import tree_leaves, tree_map
from params.init import init_params
from pipelines.command import command
from pipelines.flags import CommandParser, integer
from pipelines.training.hardware.malloc import keep_freed_memory

HPARAMS = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)


def pure_update(params, grads, lr: float):
    optimizer = chain(clip_by_global_norm(1.0), adamw(lr, **HPARAMS, mask=decay_matrices))
    carry = {"params": params, "state": optimizer.init(params)}

    def step() -> None:
        updates, carry["state"] = optimizer.update(grads, carry["state"], carry["params"])
        carry["params"] = apply_updates(carry["params"], updates)

    return step


def donated_update(params, grads, lr: float):
    """The trainer's update: moments and parameters in place (`donate=True`). It writes its updates
    into the gradients' storage, so each call first copies the same gradients into a buffer: that
    copy is timed too."""
    optimizer = chain(clip_by_global_norm(1.0), adamw(lr, **HPARAMS, mask=decay_matrices))
    params = tree_map(torch.clone, params)
    carry = {"state": optimizer.init(params), "buffer": tree_map(torch.empty_like, grads)}

    def step() -> None:
        foreach.copy_(tree_leaves(carry["buffer"]), tree_leaves(grads))
        updates, carry["state"] = optimizer.update(carry["buffer"], carry["state"], params, donate=True)
        apply_updates(params, updates, donate=True)

    return step


def torch_update(params, grads, lr: float):
    leaves = [torch.nn.Parameter(p.clone()) for p in tree_leaves(params)]
    for p, g in zip(leaves, tree_leaves(grads), strict=True):
        p.grad = g.clone()
    matrices, gains = [p for p in leaves if p.ndim >= 2], [p for p in leaves if p.ndim < 2]
    groups = [{"params": matrices}, {"params": gains, "weight_decay": 0.0}]  # as decay_matrices
    betas, eps, weight_decay = (HPARAMS["b1"], HPARAMS["b2"]), HPARAMS["eps"], HPARAMS["weight_decay"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(leaves, 1.0, foreach=True)
        optimizer.step()

    return step


def parser() -> CommandParser:
    parser = bench_parser(__doc__, "optimizer")
    add_model_arguments(parser, context=128, d_model=128, heads=4, vocab=2048)
    parser.add_argument("--repeats", type=integer(1), default=200)
    parser.add_argument("--threads", type=integer(1, 4096), default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--malloc_keep", action="store_true", help="keep freed memory in the process (glibc)")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc_keep:
        keep_freed_memory()

    config = model_config(args)
    params = init_params(config, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    grads = tree_map(lambda p: 10 * torch.randn(p.shape, generator=generator), params)  # norm > 1: clipped
    variants = {"torch clip_grad_norm_ + AdamW (in place)": torch_update(params, grads, 1e-3),
                "core.optim chain + apply_updates (pure)": pure_update(params, grads, 1e-3),
                "core.optim chain + apply_updates (donated, as the trainer)": donated_update(params, grads, 1e-3)}

    n = sum(p.numel() for p in tree_leaves(params))
    print(f"{n:,} parameters in {len(tree_leaves(params))} tensors, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, malloc-keep {args.malloc_keep}; median of {args.repeats} updates\n")
    times = time_interleaved(variants, repeats=args.repeats, warmup=5)
    peer = times["torch clip_grad_norm_ + AdamW (in place)"]
    rows = [(name, f"{t * 1e3:.2f}", f"{peer / t:.2f}") for name, t in times.items()]
    print_table(rows, ("variant", "ms/update", "speed vs torch"))


if __name__ == "__main__":
    sys.exit(main())
