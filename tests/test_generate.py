"""Decoding: temperature and top-p, KV-cache generation against the cache-free path, the CLI."""

import numpy as np
import pytest
import torch

from core.config import ModelConfig
from core.sampling import generate, next_token_probs, top_p_filter
from params.init import init_params
from pipelines.generate import generate_text, main
from pipelines.training.loop import train
from pipelines.training.config import resolve_config

CONFIG = ModelConfig(vocab_size=40, context_length=12, d_model=32, num_layers=2, num_heads=4)


pytestmark = pytest.mark.usefixtures("one_thread")


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
    story = "Once upon a time there was a cat. The cat liked to play with a ball.\n<|endoftext|>\n"
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
    main(["--run", str(run_dir), "--prompt", "The cat", "--max-tokens", "5", "--seed", "3"])
    assert capsys.readouterr().out.startswith("The cat")


def test_sampling_can_be_kept_to_the_ids_a_tokenizer_knows(params):
    # A tokenizer with fewer ids than the model's vocabulary: the rest must never be drawn.
    ids = generate(params, CONFIG, [1, 2], 200, temperature=2.0, generator=torch.Generator().manual_seed(0),
                   num_valid_tokens=7)
    assert max(ids) < 7
    unrestricted = generate(params, CONFIG, [1, 2], 200, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert max(unrestricted) >= 7
