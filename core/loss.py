"""Cross-entropy of next-token predictions."""

import torch
from jaxtyping import Float, Int
from torch import Tensor


def cross_entropy(logits: Float[Tensor, "*batch vocab"], targets: Int[Tensor, "*batch"]) -> Float[Tensor, ""]:
    """Mean over all leading positions of -log softmax(logits)[target].

    Computed as logsumexp(logits) - logits[target], in float32, so that no probability is ever
    materialised: the loss stays finite for logits of any magnitude."""
    logits = logits.float()
    shift = logits.amax(dim=-1, keepdim=True).detach()
    shifted = logits - shift
    log_normaliser = torch.log(torch.exp(shifted).sum(dim=-1))
    target_logit = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_normaliser - target_logit).mean()
