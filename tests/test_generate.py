"""Decoding: temperature and top-p, KV-cache generation against the cache-free path, the CLI and
its refusals (bad settings, a missing device or run, non-finite weights), each in one line."""

import re

import numpy as np
import pytest
import torch

from core.config import ModelConfig
from core.errors import UsageError
from core.sampling import generate, next_token_probs, top_p_filter
from core.tokenizer import Tokenizer
from core.train_state import init_train_state
from params.init import init_params
from pipelines.generate import generate_text, main
from pipelines.tokenizer.store import save_tokenizer
from pipelines.training.storage.checkpoint import read_train_state, save_train_state
from pipelines.training.hardware.device_check import require_device
from pipelines.training.run.loop import train
from pipelines.training.config.config import resolve_config
from pipelines.training.config.optimizer import make_optimizer
from pipelines.training.storage.run_dir import checkpoint_path
from tests.inputs import EOT

CONFIG = ModelConfig(vocab_size=40, context_length=12, d_model=32, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (1.5, 0.5), (0.0, 1.0)])
def test_cached_generation_draws_the_same_tokens_as_full_recomputation(params, temperature, top_p):
    # 30 new tokens after a 4-token prompt overrun the 12-token context: the window slides.
    kwargs = dict(max_new_tokens=30, temperature=temperature, top_p=top_p)
    cached = generate(params, CONFIG, [1, 2, 3, 4], generator=torch.Generator().manual_seed(5), use_cache=True, **kwargs)
    plain = generate(params, CONFIG, [1, 2, 3, 4], generator=torch.Generator().manual_seed(5), use_cache=False, **kwargs)
    assert len(cached) == 30
    assert cached == plain


def test_generation_stops_after_eos(params):
    free = generate(params, CONFIG, [1, 2], 20, generator=torch.Generator().manual_seed(1))
    eos = free[5]
    stopped = generate(params, CONFIG, [1, 2], 20, generator=torch.Generator().manual_seed(1), eos_id=eos)
    assert stopped == free[: free.index(eos) + 1]


def test_bad_prompts_and_settings_are_rejected(params):
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate(params, CONFIG, [], 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(params, CONFIG, [40], 5)
    with pytest.raises(ValueError, match="top_p"):
        next_token_probs(torch.zeros(4), top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        next_token_probs(torch.zeros(4), temperature=-1.0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    # Sorted: 0.4, 0.3, 0.15, 0.1, 0.05. Mass 0.7 reaches 0.6 with two tokens; 0.7 needs exactly those two.
    for p, kept in [(0.6, [1, 3]), (0.7, [1, 3]), (0.71, [1, 3, 4]), (0.4, [1]), (0.01, [1]), (1.0, [0, 1, 2, 3, 4])]:
        filtered = top_p_filter(probs, p)
        assert torch.nonzero(filtered).flatten().tolist() == kept, p
        torch.testing.assert_close(filtered.sum(), torch.tensor(1.0))
        torch.testing.assert_close(filtered[kept], probs[kept] / probs[kept].sum())


def test_temperature_sharpens_and_zero_is_greedy():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.1, 0.2]])
    torch.testing.assert_close(next_token_probs(logits), torch.softmax(logits, -1))
    torch.testing.assert_close(next_token_probs(logits, temperature=0.5), torch.softmax(logits / 0.5, -1))
    assert next_token_probs(logits, temperature=0.0).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    sharp, flat = next_token_probs(logits, 0.3)[0, 2], next_token_probs(logits, 3.0)[0, 2]
    assert sharp > torch.softmax(logits, -1)[0, 2] > flat


def test_sampling_follows_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = next_token_probs(logits, temperature=1.0, top_p=0.8)
    draws = torch.multinomial(probs, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    counts = np.bincount(draws.numpy(), minlength=4) / 20_000
    np.testing.assert_allclose(counts, [0.625, 0.375, 0.0, 0.0], atol=0.02)


def test_a_run_trained_on_text_generates_stories(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    story = f"Once upon a time there was a cat. The cat liked to play with a ball.\n{EOT}\n"
    (data / "train.txt").write_text(story * 60)
    (data / "valid.txt").write_text(story * 10)
    config = resolve_config("tinystories", "cpu-small", {
        "model.vocab_size": 300, "model.context_length": 32, "model.d_model": 32, "model.num_layers": 1,
        "model.num_heads": 2, "data.batch_size": 4, "max_steps": 60, "schedule.lr": 1e-2, "schedule.warmup_steps": 5,
        "log_every": 10, "eval.every": 30, "eval.windows": 4, "sample.count": 1, "sample.tokens": 8,
        "data.path": str(data), "run_dir": str(tmp_path / "run"),
    })
    run_dir = train(config)
    assert (run_dir / "tokenizer" / "vocab.json").exists()
    assert (run_dir / "samples.txt").read_text().startswith("Once upon a time")
    stories = generate_text(run_dir, "Once upon", max_tokens=12, temperature=0.0, num_samples=2)
    assert len(stories) == 2 and stories[0] == stories[1] and stories[0].startswith("Once upon")
    assert "cat" in stories[0]  # 60 steps on one repeated story are enough to learn its words

    capsys.readouterr()
    main(["--run", str(run_dir), "--sample.prompt", "The cat", "--sample.tokens", "5", "--seed", "3"])
    assert capsys.readouterr().out.startswith("The cat")


def test_sampling_can_be_kept_to_the_ids_a_tokenizer_knows(params):
    # A tokenizer with fewer ids than the model's vocabulary: the rest must never be drawn.
    ids = generate(params, CONFIG, [1, 2], 200, temperature=2.0, generator=torch.Generator().manual_seed(0),
                   num_valid_tokens=7)
    assert max(ids) < 7
    unrestricted = generate(params, CONFIG, [1, 2], 200, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert max(unrestricted) >= 7


@pytest.mark.parametrize("args", [
    ["--sample.temperature", "nan"], ["--sample.temperature", "-0.5"], ["--sample.temperature", "inf"],
    ["--sample.tokens", "-5"], ["--sample.tokens", "0"], ["--sample.count", "-1"], ["--sample.top_p", "0"],
    ["--sample.top_p", "1.5"], ["--sample.top_p", "nan"], ["--seed", "99999999999999999999"], ["--seed", "-1"],
])
def test_a_bad_setting_is_refused_in_one_line_before_anything_is_loaded(tmp_path, args):
    # The run does not exist: a setting refused first proves nothing was loaded before the check.
    with pytest.raises(SystemExit, match=rf"^error: argument {re.escape(args[0])}: must be [^\n]*$") as refused:
        main(["--run", str(tmp_path / "missing"), *args])
    assert refused.value.code == 2


@pytest.mark.parametrize("settings", [dict(max_tokens=0), dict(temperature=float("nan")), dict(top_p=1.5), dict(num_samples=0)])
def test_generate_text_holds_the_same_ranges_for_callers_from_python(tmp_path, settings):
    with pytest.raises(UsageError, match="must be"):
        generate_text(tmp_path / "missing", "hi", **settings)


def test_a_prompt_that_is_not_utf8_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --sample.prompt is not valid UTF-8 text$"):
        main(["--run", str(tmp_path / "missing"), "--sample.prompt", b"\xff".decode("utf-8", "surrogateescape")])


def test_a_device_this_machine_lacks_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"^error: --device cuda: CUDA is not available on this machine$"):
        main(["--run", str(tmp_path / "missing"), "--device", "cuda"])
    with pytest.raises(ValueError, match=r"--device tpu: not a device name"):
        require_device("tpu")
    with pytest.raises(ValueError, match=r"--device meta: not supported here"):
        require_device("meta")
    assert require_device("cpu") == torch.device("cpu")


def test_a_missing_run_directory_is_named_as_such(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: run directory .*missing does not exist$"):
        main(["--run", str(tmp_path / "missing")])


def test_a_checkpoint_with_non_finite_weights_cannot_generate(tmp_path):
    config = resolve_config("tinystories", "cpu-small", {
        "model.vocab_size": 300, "model.context_length": 16, "model.d_model": 32, "model.num_layers": 1,
        "model.num_heads": 2, "run_dir": str(tmp_path / "run"),
    })
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])
    save_tokenizer(tokenizer, tmp_path / "run" / "tokenizer")
    state = init_train_state(init_params(config.model, torch.Generator().manual_seed(0)), make_optimizer(config), rng=0)
    path = checkpoint_path(tmp_path / "run")
    path.parent.mkdir(parents=True)
    meta = {"model_config": config.model.to_dict(), "train_config": config.to_dict(), "tokenizer": tokenizer.fingerprint()}
    save_train_state(path, state, meta)
    # Spoiled after writing, as by a run that diverged before checkpoints were checked.
    payload = read_train_state(path)
    payload["params"]["token_embeddings.weight"][3, 5] = float("nan")
    torch.save(payload, path)
    with pytest.raises(SystemExit) as refused:
        main(["--run", str(tmp_path / "run"), "--sample.prompt", "hi"])
    # One line naming the file and the parameter, instead of a traceback from the sampler.
    assert re.fullmatch(r"error: [^\n]*last\.pt[^\n]*(non-finite|NaN)[^\n]*", str(refused.value))
    assert "token_embeddings.weight" in str(refused.value) and refused.value.code == 2
