"""Decoding: temperature scaling, nucleus (top-p) filtering, and autoregressive generation."""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from core.config import ModelConfig
from core.layers import softmax
from core.model import forward, forward_cached, init_kv_cache
from core.tree import Tree


def next_token_probs(
    logits: Float[Tensor, "*batch vocab"], temperature: float = 1.0, top_p: float = 1.0
) -> Float[Tensor, "*batch vocab"]:
    """The sampling distribution: softmax(logits / temperature), cut to its top-p nucleus.

    temperature 0 means greedy decoding: all mass on the (first) most likely token."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    logits = logits.float()
    if temperature < torch.finfo(logits.dtype).tiny:  # 0, or too small to divide by in float32: greedy
        greedy = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, greedy, 1.0)
    # Shifted so the largest logit is 0 before dividing: a tiny temperature then sends the others
    # to -inf (probability 0) instead of every logit to +-inf, whose softmax is NaN.
    probs = softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)
    return top_p_filter(probs, top_p) if top_p < 1.0 else probs


def top_p_filter(probs: Float[Tensor, "*batch vocab"], top_p: float) -> Float[Tensor, "*batch vocab"]:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`, renormalised."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # A token is in the nucleus when the mass strictly before it is still short of top_p; the most
    # likely token always is, also when top_p is below float32's smallest number and rounds to 0.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    in_nucleus = mass_before < top_p
    in_nucleus[..., 0] = True
    sorted_kept = torch.where(in_nucleus, sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_kept)
    return kept / kept.sum(dim=-1, keepdim=True)


@torch.inference_mode()
def generate(
    params: Tree,
    config: ModelConfig,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    num_valid_tokens: int | None = None,
) -> list[int]:
    """Sample up to `max_new_tokens` tokens after `prompt_ids`; stops early after `eos_id`.

    Returns the new tokens only (ending with eos_id when it was drawn). With `use_cache` each step
    feeds one token through the KV cache; without, each step reruns the model over the whole
    window. Both see the same logits, so under the same generator they draw the same tokens. Once
    the sequence outgrows the context, both condition on its last `context_length` tokens.

    Sampling happens on the CPU (with a CPU `generator`, or torch's global RNG when None), so a
    seed gives the same story whatever device the model is on. `num_valid_tokens` restricts
    sampling to ids below it: a tokenizer that ran out of merges before the model's vocab_size
    leaves embedding rows that no data ever trained and no tokenizer can decode.
    """
    if len(prompt_ids) == 0:
        raise ValueError("generate needs a non-empty prompt (e.g. the <|endoftext|> id)")
    if max(prompt_ids) >= config.vocab_size or min(prompt_ids) < 0:
        raise ValueError(f"prompt holds token ids outside the vocabulary [0, {config.vocab_size})")
    device = params["token_embeddings"]["weight"].device
    dtype = params["token_embeddings"]["weight"].dtype
    tokens = list(prompt_ids)
    new_tokens: list[int] = []
    cache = None
    for _ in range(max_new_tokens):
        window = tokens[-config.context_length :]
        if not use_cache:
            logits = forward(params, torch.tensor([window], device=device), config)
        elif cache is not None and cache.length < config.context_length:
            logits, cache = forward_cached(params, torch.tensor([tokens[-1:]], device=device), config, cache)
        else:  # first step, or the window slid: positions changed, so the cache starts over
            cache = init_kv_cache(config, 1, device=device, dtype=dtype)
            logits, cache = forward_cached(params, torch.tensor([window], device=device), config, cache)
        last = logits[0, -1].cpu()
        if num_valid_tokens is not None:
            last[num_valid_tokens:] = float("-inf")
        probs = next_token_probs(last, temperature, top_p)
        token = int(torch.multinomial(probs, 1, generator=generator))
        tokens.append(token)
        new_tokens.append(token)
        if token == eos_id:
            break
    return new_tokens
