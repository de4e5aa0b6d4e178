"""The speedrun records' architecture switches (qk_norm, ffn="relu2", logit_softcap,
zero_init_out_proj, value_residual), each alone and all together, against the float64 reference
in reference.py on both kernels; with the KV cache; their parameters, initialisation, loading,
gradients and config serialisation."""

import math

import pytest
import torch
import torch.nn.functional as F
from jaxtyping import TypeCheckError

from core.config import ModelConfig
from core.loss import cross_entropy
from core.model import forward, forward_cached, init_kv_cache, transformer_block
from core.sampling import generate
from params.init import init_params, param_shapes
from params.load import load_params
from params.modules import TransformerLM
from params.tree import flatten, unflatten

from .inputs import randint, small_config
from .reference import block64, heads64, lm64, norm64

ALL = dict(qk_norm=True, ffn="relu2", logit_softcap=2.0, zero_init_out_proj=True, value_residual=True)
SWITCHES = [
    {"qk_norm": True},
    {"ffn": "relu2"},
    {"logit_softcap": 2.0},
    {"zero_init_out_proj": True},
    {"value_residual": True},
    ALL,
    {**ALL, "tie_embeddings": True},
    {**ALL, "norm": "post"},
    {**ALL, "norm": "none", "position": "none"},
]
KERNELS = ["reference", "torch"]
NEW_FIELDS = ("qk_norm", "logit_softcap", "zero_init_out_proj", "value_residual")


def ids(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def config(kernels: str = "reference", **overrides) -> ModelConfig:
    return small_config(num_layers=3, kernels=kernels, **overrides)


def perturbed(params: dict, seed: int) -> dict:
    """The parameters plus noise: gains away from 1, lambdas away from 0.5, zero projections
    non-zero, so that every switch's parameters matter in a comparison."""
    generator = torch.Generator().manual_seed(seed)
    flat = flatten(params)
    return unflatten({name: value + 0.2 * torch.randn(value.shape, generator=generator) for name, value in flat.items()})


# -- configuration ---------------------------------------------------------------------------


def test_switches_are_off_by_default_and_old_config_dicts_load():
    old = {"vocab_size": 50, "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 48,
           "rope_theta": 1000.0, "norm": "pre", "position": "rope", "ffn": "swiglu", "tie_embeddings": False,
           "rmsnorm_eps": 1e-5, "kernels": "torch"}  # a to_dict() from before the switches existed
    loaded = ModelConfig.from_dict(old)
    assert loaded.to_dict() == {**old, "qk_norm": False, "logit_softcap": None, "zero_init_out_proj": False, "value_residual": False}


def test_config_round_trips_and_reports_each_switch_as_an_architecture_change():
    switched = config(**ALL)
    assert ModelConfig.from_dict(switched.to_dict()) == switched
    assert switched.d_ff == 48 and config(ffn="relu2", d_ff=None).d_ff == 4 * 32  # two matrices, like SiLU
    base = config()
    for name in NEW_FIELDS:
        assert base.architecture_changes(config(**{name: ALL[name]})) == [name]
    assert base.architecture_changes(config(ffn="relu2")) == ["ffn"]


def test_softcap_is_a_float():
    assert config(logit_softcap=30).logit_softcap == 30.0 and isinstance(config(logit_softcap=30).logit_softcap, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"logit_softcap": 0.0}, "logit_softcap must be a positive finite number"),
        ({"logit_softcap": -30.0}, "logit_softcap must be a positive finite number"),
        ({"logit_softcap": math.inf}, "logit_softcap must be a positive finite number"),
        ({"logit_softcap": math.nan}, "logit_softcap must be a positive finite number"),
        ({"ffn": "relu"}, r"ffn must be one of \('swiglu', 'silu', 'relu2'\)"),
    ],
)
def test_bad_switch_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


@pytest.mark.parametrize(
    "overrides", [{"qk_norm": 1}, {"value_residual": "yes"}, {"zero_init_out_proj": None}, {"logit_softcap": True}]
)
def test_switches_of_the_wrong_type_are_rejected(overrides):
    # ModelConfig's own check (ValueError naming the field), or first the runtime type checker
    # that `just test` installs over core.
    name = next(iter(overrides))
    with pytest.raises((ValueError, TypeCheckError), match=name):
        config(**overrides)


# -- parameters ------------------------------------------------------------------------------


def test_new_parameters_exist_exactly_when_their_switch_is_on():
    base = set(param_shapes(config()))
    qk = param_shapes(config(qk_norm=True))
    assert set(qk) - base == {f"layers.{i}.attn.{n}_norm.weight" for i in range(3) for n in "qk"}
    assert all(qk[f"layers.{i}.attn.{n}_norm.weight"][1] == (8,) for i in range(3) for n in "qk")  # head_dim
    vr = param_shapes(config(value_residual=True))
    # Layer 0's lambda would mix its values with themselves: only the later layers have one.
    assert set(vr) - base == {"layers.1.attn.value_lambda", "layers.2.attn.value_lambda"}
    assert vr["layers.1.attn.value_lambda"][1] == ()
    assert base - set(param_shapes(config(ffn="relu2"))) == {f"layers.{i}.ffn.w3.weight" for i in range(3)}
    assert set(param_shapes(config(logit_softcap=2.0))) == set(param_shapes(config(zero_init_out_proj=True))) == base
    shell = TransformerLM(config(**ALL), torch.Generator().manual_seed(0))
    assert set(shell.state_dict()) == set(param_shapes(config(**ALL)))


def test_new_parameters_start_at_one_and_one_half():
    params = flatten(init_params(config(qk_norm=True, value_residual=True), torch.Generator().manual_seed(0)))
    for i in range(3):
        assert torch.equal(params[f"layers.{i}.attn.q_norm.weight"], torch.ones(8))
        assert torch.equal(params[f"layers.{i}.attn.k_norm.weight"], torch.ones(8))
    assert params["layers.1.attn.value_lambda"].item() == params["layers.2.attn.value_lambda"].item() == 0.5


def test_zero_init_zeroes_the_out_projections_and_leaves_every_other_weight_as_the_seed_draws_it():
    zeroed = flatten(init_params(config(zero_init_out_proj=True), torch.Generator().manual_seed(0)))
    plain = flatten(init_params(config(), torch.Generator().manual_seed(0)))
    out_projections = {f"layers.{i}.{name}.weight" for i in range(3) for name in ("attn.output_proj", "ffn.w2")}
    for name, value in zeroed.items():
        if name in out_projections:
            assert not value.any() and plain[name].any()
        else:
            assert torch.equal(value, plain[name]), name


def test_zero_init_makes_every_pre_norm_block_the_identity():
    cfg = config(zero_init_out_proj=True, logit_softcap=2.0, tie_embeddings=True)
    params = init_params(cfg, torch.Generator().manual_seed(0))
    w = flatten(params)
    tokens = randint(1, cfg.vocab_size, 2, 9)
    x = F.embedding(tokens, w["token_embeddings.weight"].double())
    logits = norm64(w, "ln_final", x, cfg) @ w["token_embeddings.weight"].double().T
    torch.testing.assert_close(forward(params, tokens, cfg).double(), 2.0 * torch.tanh(logits / 2.0), atol=1e-5, rtol=1e-5)


def test_load_params_requires_the_new_parameters_exactly_when_switched_on():
    on, off = config(qk_norm=True, value_residual=True), config()
    flat = flatten(init_params(on, torch.Generator().manual_seed(0)))
    assert set(flatten(load_params(flat, on))) == set(flat)
    with pytest.raises(ValueError, match=r"unexpected \['layers.0.attn.k_norm.weight'"):
        load_params(flat, off)
    missing = {name: value for name, value in flat.items() if name != "layers.2.attn.value_lambda"}
    with pytest.raises(ValueError, match=r"missing \['layers.2.attn.value_lambda'\]"):
        load_params(missing, on)
    wrong = {**flat, "layers.1.attn.q_norm.weight": torch.ones(32)}
    with pytest.raises(ValueError, match="'layers.1.attn.q_norm.weight' has shape \\(32,\\), the config expects \\(8,\\)"):
        load_params(wrong, on)


def test_tied_embeddings_keep_the_first_loss_near_ln_vocab_with_every_switch():
    cfg = ModelConfig(vocab_size=2048, context_length=64, d_model=128, num_layers=4, num_heads=4, tie_embeddings=True,
                      **{**ALL, "logit_softcap": 30.0, "zero_init_out_proj": False})
    params = init_params(cfg, torch.Generator().manual_seed(0))
    tokens = randint(1, cfg.vocab_size, 4, 65)
    with torch.no_grad():
        loss = cross_entropy(forward(params, tokens[:, :-1], cfg), tokens[:, 1:]).item()
    assert abs(loss - math.log(cfg.vocab_size)) < 0.1 * math.log(cfg.vocab_size)


# -- the model against the float64 reference -----------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("overrides", SWITCHES, ids=ids)
def test_forward_matches_the_float64_reference(overrides, kernels):
    cfg = config(kernels, **overrides)
    params = perturbed(init_params(cfg, torch.Generator().manual_seed(0)), seed=1)
    tokens = randint(2, cfg.vocab_size, 2, 13)
    expected = lm64(flatten(params), tokens, cfg)
    if cfg.logit_softcap is not None:  # the cap must bite for the comparison to check it
        uncapped = lm64(flatten(params), tokens, config(kernels, **{**overrides, "logit_softcap": None}))
        assert uncapped.abs().max() > 1.5 * cfg.logit_softcap
    torch.testing.assert_close(forward(params, tokens, cfg).double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernels", KERNELS)
def test_a_later_block_mixes_in_the_first_values_given_to_it(kernels):
    cfg = config(kernels, qk_norm=True, value_residual=True)
    params = perturbed(init_params(cfg, torch.Generator().manual_seed(0)), seed=1)
    x = torch.randn(2, 9, cfg.d_model, generator=torch.Generator().manual_seed(2))
    w = flatten(params)
    v1 = heads64(w, x.double(), cfg, "layers.0.attn.v_proj")
    out = transformer_block(params["layers"][1], x, cfg, first_values=v1.float())
    torch.testing.assert_close(out.double(), block64(w, x.double(), cfg, "layers.1.", v1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("overrides", [ALL, {**ALL, "norm": "post", "tie_embeddings": True}], ids=["all", "all-post-tied"])
def test_cached_decoding_matches_the_full_forward(overrides, kernels):
    """A 4-token prefix, a 3-token chunk over the cache and single tokens: the cached values are
    the mixed ones, so later steps need no first-layer values of the past."""
    cfg = config(kernels, **overrides)
    params = perturbed(init_params(cfg, torch.Generator().manual_seed(0)), seed=1)
    tokens = randint(3, cfg.vocab_size, 2, 12)
    cache = init_kv_cache(cfg, batch_size=2)
    steps = []
    for start, stop in [(0, 4), (4, 7)] + [(t, t + 1) for t in range(7, 12)]:
        logits, cache = forward_cached(params, tokens[:, start:stop], cfg, cache)
        steps.append(logits)
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), forward(params, tokens, cfg), atol=1e-5, rtol=1e-5)


def test_sampling_sees_the_capped_logits():
    cfg = config("torch", **ALL)
    params = perturbed(init_params(cfg, torch.Generator().manual_seed(0)), seed=1)
    params["lm_head"]["weight"] = 100 * params["lm_head"]["weight"]
    logits, _ = forward_cached(params, randint(4, cfg.vocab_size, 1, 5), cfg, init_kv_cache(cfg, 1))
    assert logits.abs().max() <= cfg.logit_softcap
    cached = generate(params, cfg, [1, 2, 3], 8, generator=torch.Generator().manual_seed(5))
    full = generate(params, cfg, [1, 2, 3], 8, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert cached == full


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
def test_gradients_reach_every_new_parameter(kernels):
    cfg = config(kernels, **ALL)
    params = perturbed(init_params(cfg, torch.Generator().manual_seed(0)), seed=1)
    flat = {name: value.requires_grad_() for name, value in flatten(params).items()}
    tokens = randint(2, cfg.vocab_size, 2, 13)
    loss = cross_entropy(forward(unflatten(flat), tokens[:, :-1], cfg), tokens[:, 1:])
    grads = dict(zip(flat, torch.autograd.grad(loss, list(flat.values())), strict=True))
    new = [name for name in flat if name.endswith(("q_norm.weight", "k_norm.weight", "value_lambda"))]
    assert len(new) == 2 * 3 + 2
    for name in new:
        assert grads[name].abs().sum() > 0, name


def test_zero_initialised_out_projections_get_gradients_at_the_first_step():
    cfg = config(**ALL)
    flat = {name: value.requires_grad_() for name, value in flatten(init_params(cfg, torch.Generator().manual_seed(0))).items()}
    tokens = randint(2, cfg.vocab_size, 2, 13)
    loss = cross_entropy(forward(unflatten(flat), tokens[:, :-1], cfg), tokens[:, 1:])
    grads = dict(zip(flat, torch.autograd.grad(loss, list(flat.values())), strict=True))
    for i in range(3):
        assert grads[f"layers.{i}.attn.output_proj.weight"].abs().sum() > 0
        assert grads[f"layers.{i}.ffn.w2.weight"].abs().sum() > 0
