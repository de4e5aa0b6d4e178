"""Configuration checks, parameter initialisation, naming and loading."""

import math

import pytest
import torch
from jaxtyping import TypeCheckError

from core import layers
from core.config import ModelConfig, default_d_ff
from core.loss import cross_entropy
from core.model import forward
from params.init import count_params, init_params, param_shapes
from params.load import load_params
from params.tree import flatten, unflatten

BASE = dict(vocab_size=100, context_length=32, d_model=64, num_layers=2, num_heads=4)


def test_default_d_ff_is_the_handouts():
    assert default_d_ff(512) == 1344
    assert ModelConfig(**{**BASE, "d_model": 512, "num_heads": 16}).d_ff == 1344
    assert ModelConfig(**{**BASE, "ffn": "silu"}).d_ff == 4 * 64
    assert default_d_ff(8) == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_heads": 5}, "divisible by num_heads"),
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"vocab_size": -3}, "vocab_size must be a positive integer"),
        ({"d_ff": 0}, "d_ff must be a positive integer"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"position": "alibi"}, "position must be one of"),
        ({"ffn": "gelu"}, "ffn must be one of"),
        ({"rope_theta": 0.0}, "rope_theta must be positive"),
        ({"d_model": 12, "num_heads": 4}, "even head dimension"),
    ],
)
def test_invalid_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**BASE, **overrides})


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    config = ModelConfig(**BASE, norm="post")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['dmodel'\]"):
        ModelConfig.from_dict({**BASE, "dmodel": 3})


def test_flatten_unflatten_round_trip():
    tree = {"a": {"weight": torch.ones(1)}, "layers": [{"w": torch.zeros(2)}, {"w": torch.ones(2)}]}
    flat = flatten(tree)
    assert list(flat) == ["a.weight", "layers.0.w", "layers.1.w"]
    rebuilt = unflatten(flat)
    assert isinstance(rebuilt["layers"], list) and rebuilt["layers"][1]["w"] is tree["layers"][1]["w"]


def test_init_is_deterministic_and_follows_the_handout():
    # d_model 256 gives the statistics 65,536 draws; a narrow feed-forward and vocabulary keep it quick.
    config = ModelConfig(**{**BASE, "d_model": 256, "num_heads": 4, "vocab_size": 500, "d_ff": 64})
    a = flatten(init_params(config, torch.Generator().manual_seed(0)))
    b = flatten(init_params(config, torch.Generator().manual_seed(0)))
    c = flatten(init_params(config, torch.Generator().manual_seed(1)))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])

    q = a["layers.0.attn.q_proj.weight"]
    std = math.sqrt(2 / (256 + 256))
    # A normal cut at ±3σ keeps a standard deviation of 0.9866σ.
    assert abs(q.std().item() - 0.9866 * std) < 0.02 * std
    assert q.abs().max() <= 3 * std + 1e-6
    emb = a["token_embeddings.weight"]
    assert emb.abs().max() <= 3.0 and abs(emb.std().item() - 0.986) < 0.02
    assert torch.equal(a["layers.1.ln2.weight"], torch.ones(256))


def test_count_matches_the_pytree():
    for overrides in ({}, {"tie_embeddings": True}, {"ffn": "silu"}, {"norm": "none"}):
        config = ModelConfig(**BASE, **overrides)
        tree = init_params(config, torch.Generator().manual_seed(0))
        assert count_params(config) == sum(t.numel() for t in flatten(tree).values())


def test_load_params_checks_names_and_shapes():
    config = ModelConfig(**BASE)
    flat = flatten(init_params(config, torch.Generator().manual_seed(0)))
    compiled = {f"_orig_mod.{name}": t for name, t in flat.items()}
    assert flatten(load_params(compiled, config)).keys() == flat.keys()

    missing = dict(flat)
    del missing["layers.1.ln1.weight"]
    with pytest.raises(ValueError, match=r"missing \['layers.1.ln1.weight'\]"):
        load_params(missing, config)
    wrong = {**flat, "lm_head.weight": torch.zeros(3, 64)}
    with pytest.raises(ValueError, match=r"'lm_head.weight' has shape \(3, 64\), the config expects \(100, 64\)"):
        load_params(wrong, config)
    assert set(param_shapes(ModelConfig(**BASE, tie_embeddings=True))) == set(flat) - {"lm_head.weight"}


def test_runtime_shape_checking_catches_a_wrong_shape():
    if not hasattr(layers.linear, "__wrapped__"):
        pytest.skip("runtime shape checking is off: run through `just test`")
    with pytest.raises(TypeCheckError, match="d_in"):
        layers.linear(torch.zeros(3, 4), torch.zeros(2, 5))


CPU_SMALL = dict(vocab_size=2048, context_length=128, d_model=128, num_layers=4, num_heads=4)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": True}, {"tie_embeddings": True, "norm": "post"}, {"tie_embeddings": True, "position": "none"}],
    ids=["untied", "tied", "tied-post-norm", "tied-nope"],
)
def test_initial_loss_is_near_log_vocab(overrides):
    # Fresh logits should be small, so that the first loss is the uniform guess's ln V: a tied
    # embedding initialised with the embedding's std 1 gave ~87 here.
    config = ModelConfig(**CPU_SMALL, **overrides)
    params = init_params(config, torch.Generator().manual_seed(0))
    tokens = torch.randint(0, config.vocab_size, (4, 65), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = cross_entropy(forward(params, tokens[:, :-1], config), tokens[:, 1:]).item()
    assert abs(loss - math.log(config.vocab_size)) < 0.1 * math.log(config.vocab_size)


def test_tied_embedding_takes_the_output_heads_init():
    config = ModelConfig(**CPU_SMALL, tie_embeddings=True)
    emb = init_params(config, torch.Generator().manual_seed(0))["token_embeddings"]["weight"]
    std = math.sqrt(2 / (config.vocab_size + config.d_model))
    assert abs(emb.std().item() - 0.9866 * std) < 0.02 * std and emb.abs().max() <= 3 * std + 1e-6
