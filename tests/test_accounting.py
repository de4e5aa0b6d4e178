"""The accounting formulas against what the code builds and runs: parameter counts against the
pytree init_params makes, forward FLOPs against torch's FLOP counter on a real forward pass."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.accounting import (
    forward_flops,
    max_batch_size,
    params_by_component,
    training_memory,
    training_seconds,
    training_step_flops,
)
from core.config import ModelConfig
from core.model import forward
from core.tree import tree_leaves
from params.init import count_params, init_params
from pipelines.experiments.accounting import default_report, gpt2, main, params_table

SMALL = dict(vocab_size=97, context_length=24, d_model=32, num_layers=2, num_heads=4)
VARIANTS = [
    {},
    {"norm": "none"},
    {"norm": "post"},
    {"position": "none"},
    {"ffn": "silu"},
    {"tie_embeddings": True},
    {"d_ff": 48, "num_layers": 3},
    {"qk_norm": True},
    {"ffn": "relu2"},
    {"value_residual": True},
    {"zero_init_out_proj": True, "logit_softcap": 30.0},
    {"qk_norm": True, "ffn": "relu2", "value_residual": True, "tie_embeddings": True, "norm": "none", "num_layers": 3},
]


@pytest.mark.parametrize("changes", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "base")
def test_parameter_count_matches_the_built_pytree(changes):
    config = ModelConfig(**{**SMALL, **changes})
    params = init_params(config, torch.Generator().manual_seed(0))
    built = sum(leaf.numel() for leaf in tree_leaves(params))
    assert sum(params_by_component(config).values()) == built == count_params(config)


SWITCHED = {"qk_norm": True, "ffn": "relu2", "logit_softcap": 30.0, "value_residual": True}


@pytest.mark.parametrize(
    "changes", [{}, {"ffn": "silu"}, {"position": "none", "norm": "post"}, SWITCHED], ids=["swiglu", "silu", "nope-post", "switches"]
)
def test_forward_flops_match_torch_flop_counter(changes):
    # The reference kernels: FlopCounterMode counts nothing for the CPU's fused attention kernel
    # (F.scaled_dot_product_attention), which would drop the 4 T^2 d of scores and weighted sum.
    config = ModelConfig(**{**SMALL, **changes}, kernels="reference")
    params = init_params(config, torch.Generator().manual_seed(0))
    batch = 3
    tokens = torch.randint(0, config.vocab_size, (batch, config.context_length), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(params, tokens, config)
    measured = counter.get_total_flops()
    assert measured == pytest.approx(batch * forward_flops(config), rel=0.01)


def test_params_table_shows_the_value_residual_column_for_every_config():
    plain, mixed = ModelConfig(**SMALL), ModelConfig(**SMALL, value_residual=True)
    header, _, plain_row, mixed_row = params_table({"plain": plain, "mixed": mixed}).splitlines()
    assert header.endswith("| value residual (lambda) |")
    assert plain_row.endswith("| 0 |") and mixed_row.endswith(f"| {SMALL['num_layers'] - 1} |")


def test_gpt2_xl_matches_the_hand_computation():
    xl = gpt2("GPT-2 XL")
    d, f, layers, vocab = 1600, 6400, 48, 50_257
    assert sum(params_by_component(xl).values()) == layers * (4 * d * d + 3 * d * f + 2 * d) + 2 * vocab * d + d
    t = 1024
    assert forward_flops(xl) == layers * (8 * t * d * d + 4 * t * t * d + 6 * t * d * f) + 2 * t * d * vocab


def test_memory_is_linear_in_batch_and_max_batch_fits():
    xl = gpt2("GPT-2 XL")
    one, two, three = (training_memory(xl, b).total for b in (1, 2, 3))
    assert two - one == three - two > 0
    best = max_batch_size(xl, 80e9)
    assert training_memory(xl, best).total <= 80e9 < training_memory(xl, best + 1).total
    memory = training_memory(xl, 1)
    assert memory.optimizer_state == 2 * memory.parameters == 2 * memory.gradients


def test_training_time_is_flops_over_effective_throughput():
    xl = gpt2("GPT-2 XL")
    seconds = training_seconds(xl, 400_000, 1024, 19.5e12, 0.5)
    assert seconds == pytest.approx(400_000 * training_step_flops(xl, 1024) / 9.75e12)
    assert 6000 < seconds / 86_400 < 7000  # the handout's A100 question: about 18 years
    with pytest.raises(ValueError, match="mfu"):
        training_seconds(xl, 1, 1, 1e12, 0)


def test_default_report_covers_every_question():
    report = default_report()
    for heading in ("GPT-2 small", "GPT-2 XL at context 16,384", "max B in 80 GB", "AdamW FLOPs", "A100"):
        assert heading in report
    assert "6,584 days" in report


def test_one_config_report_takes_the_trainers_names(capsys):
    main(["--model.vocab_size", "10000", "--model.context_length", "256", "--model.d_model", "512",
          "--model.num_layers", "4", "--model.num_heads", "16", "--model.d_ff", "1344", "--data.batch_size", "128",
          "--max_steps", "10000"])
    report = capsys.readouterr().out
    assert f"{count_params(ModelConfig(10_000, 256, 512, 4, 16, d_ff=1344)):,}" in report
    assert "10,000 steps x batch 128" in report
    with pytest.raises(SystemExit, match="^error: .*--model.vocab_size"):  # one line, no usage
        main(["--model.d_model", "512"])  # the other required sizes are missing
