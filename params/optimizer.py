"""`AdamW` as a `torch.optim.Optimizer`: a thin shell over the pure `core.optim.adamw_update`.

The shell only moves tensors between the Optimizer's bookkeeping (param groups, per-parameter
state) and the pure function's lists, so there is one implementation of the arithmetic. Per
parameter it keeps `step`, `exp_avg` and `exp_avg_sq`, the names `torch.optim.AdamW` uses, so its
`state_dict()` reads the same and round-trips through `load_state_dict()`.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch

from core.optim import AdamWHParams, adamw_update


class AdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"AdamW lr must be non-negative, got {lr!r}")
        AdamWHParams(tuple(betas), eps, weight_decay)  # validates the rest
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hparams = AdamWHParams(tuple(group["betas"]), group["eps"], group["weight_decay"])
            # Parameters that skipped earlier steps (no grad) have their own step count; the pure
            # update takes one count, so each distinct count is one call (almost always just one).
            by_step: dict[int, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                by_step.setdefault(int(state["step"]), []).append(p)
            for step, ps in by_step.items():
                opt_state = {
                    "step": step,
                    "m": [self.state[p]["exp_avg"] for p in ps],
                    "v": [self.state[p]["exp_avg_sq"] for p in ps],
                }
                new_params, new_state = adamw_update(
                    [p.grad for p in ps], opt_state, list(ps), hparams, group["lr"]
                )
                torch._foreach_copy_(ps, new_params)
                for p, m, v in zip(ps, new_state["m"], new_state["v"], strict=True):
                    self.state[p].update(step=new_state["step"], exp_avg=m, exp_avg_sq=v)
        return loss
