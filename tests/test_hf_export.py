"""Export to and import from Hugging Face `transformers` (params/hf, pipelines/export), held to the
real library: logits, greedy generation and token ids agree; a LlamaForCausalLM made by
`transformers` imports; every refusal is one line and writes nothing."""

import json
import os
import random
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from conftest import shared_path
from core.errors import UsageError
from core.model import forward
from core.sampling import generate
from core.train_state import init_train_state
from params.hf import load_hf, to_hf_state_dict
from params.hf.rope import halves_to_pairs, pairs_to_halves
from params.init import init_params
from params.tree import flatten, unflatten
from pipelines.export.command import export_run, main, parser
from pipelines.export.tokenizer_files import EOT
from pipelines.generate import load_run
from pipelines.generate import main as generate_main
from pipelines.training.config.config import TrainConfig, resolve_config, with_overrides
from pipelines.training.config.optimizer import make_optimizer
from pipelines.training.run.loop import train
from pipelines.training.storage.checkpoint import save_train_state
from pipelines.training.storage.run_dir import CONFIG_FILE, SUMMARY_FILE, TOKENIZER_DIR, checkpoint_path
from tests.commands import ROOT

# Nothing here may reach the network: transformers must load the folders as they are. Set before
# transformers is first imported, as huggingface_hub reads it once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


WORDS = "the a cat dog sat ran on mat big small red blue and was happy sad Lily Tom saw ball played with".split()


def synthetic_text(seed: int, documents: int, words: int) -> str:
    """Random sentences over a few words, one <|endoftext|> per long document: the model learns
    the words but rarely predicts the end of a document."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "." for _ in range(words // 6)]
        docs.append("Once upon a time " + " ".join(sentences) + "\n")
    return f"{EOT}\n".join(docs) + f"{EOT}\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained on text (its own BPE tokenizer), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    data.mkdir()
    (data / "train.txt").write_text(synthetic_text(0, 8, 300))
    (data / "valid.txt").write_text(synthetic_text(1, 2, 300))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMKIT_CACHE", str(root / "cache"))
        config = resolve_config("tinystories", "cpu-small", {
            "model.vocab_size": 512, "model.context_length": 64, "model.d_model": 32, "model.num_layers": 2,
            "model.num_heads": 2, "data.batch_size": 4, "max_steps": 12, "schedule.lr": 1e-2, "schedule.warmup_steps": 2,
            "log_every": 4, "eval.every": 12, "eval.windows": 4, "sample.count": 0, "data.path": str(data),
            "run_dir": str(root / "run"),
        })
        return train(config)


def variant_run(trained_run: Path, directory: Path, **model: object) -> Path:
    """A run beside `trained_run`, with its tokenizer, of the model changed by `model` (random
    weights, RMSNorm gains too, so that no tensor is all ones)."""
    base = TrainConfig.from_dict(json.loads((trained_run / CONFIG_FILE).read_text()))
    config = with_overrides(base, {f"model.{name}": value for name, value in model.items()} | {"run_dir": str(directory)})
    generator = torch.Generator().manual_seed(1)
    flat = flatten(init_params(config.model, generator))
    flat = {name: t + 0.1 * torch.randn(t.shape, generator=generator) if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")) else t
            for name, t in flat.items()}
    tokenizer_dir = directory / TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True)
    for file in (trained_run / TOKENIZER_DIR).iterdir():
        (tokenizer_dir / file.name).write_bytes(file.read_bytes())
    _, _, tokenizer = load_run(trained_run, None, torch.device("cpu"))
    state = init_train_state(unflatten(flat), make_optimizer(config), rng=0)
    meta = {"model_config": config.model.to_dict(), "train_config": config.to_dict(), "tokenizer": tokenizer.fingerprint()}
    checkpoint_path(directory).parent.mkdir()
    save_train_state(checkpoint_path(directory), state, meta)
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    return directory


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    return export_run(trained_run, tmp_path_factory.mktemp("exports") / "model")


def hf_logits(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(tokens).logits


# -- RoPE's row order ------------------------------------------------------------------------------


def test_transformers_runs_offline_here():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE


def test_the_rope_reordering_turns_our_pairs_rotation_into_llamas_halves_rotation():
    """On one projection: rotating pairs of x W (ours) equals rotating halves of x W' (Llama's
    rotate_half math, from transformers itself) with the rows put back in our order."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from core.attention import rope

    heads, head_dim, seq = 3, 8, 5
    weight, x = torch.randn(heads * head_dim, 16), torch.randn(seq, 16)
    positions = torch.arange(seq)
    ours = rope((x @ weight.T).unflatten(-1, (heads, head_dim)).transpose(0, 1), positions, 100.0, seq)
    theirs_q = (x @ pairs_to_halves(weight, heads).T).unflatten(-1, (heads, head_dim)).transpose(0, 1)
    inv_freq = 100.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.cat([positions[:, None] * inv_freq] * 2, dim=-1)
    theirs, _ = apply_rotary_pos_emb(theirs_q[None], theirs_q[None], angles.cos()[None], angles.sin()[None])
    back = theirs[0].transpose(0, 1).flatten(-2)  # Llama's row order: undo it
    torch.testing.assert_close(halves_to_pairs(back.T, heads).T, ours.transpose(0, 1).flatten(-2), atol=1e-5, rtol=1e-5)
    assert torch.equal(halves_to_pairs(pairs_to_halves(weight, heads), heads), weight)
    assert not torch.equal(pairs_to_halves(weight, heads), weight)


# -- export: logits, generation, tokenizer ---------------------------------------------------------


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": True}, {"rope_theta": 500.0}, {"tie_embeddings": True, "rope_theta": 500.0}],
                         ids=["trained", "tied", "theta500", "tied-theta500"])
def test_transformers_computes_our_logits_at_full_context(trained_run, tmp_path, changes):
    run = variant_run(trained_run, tmp_path / "run", **changes) if changes else trained_run
    folder = export_run(run, tmp_path / "export")
    params, config, _ = load_run(run, None, torch.device("cpu"))
    assert all(getattr(config, name) == value for name, value in changes.items())
    tokens = torch.randint(0, config.vocab_size, (2, config.context_length), generator=torch.Generator().manual_seed(0))
    ours = forward(params, tokens, config)
    theirs = hf_logits(folder, tokens)
    assert ours.abs().max() > 1  # a real model, not all zeros
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    stored = safetensors_torch.load_file(folder / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not config.tie_embeddings)


def test_greedy_generation_gives_the_same_tokens_and_text_as_just_generate(trained_run, exported, capsys):
    prompt = "Once upon a time the cat"
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    theirs = model.generate(prompt_ids, max_new_tokens=50, do_sample=False)[0, prompt_ids.shape[1]:].tolist()

    params, config, ours_tokenizer = load_run(trained_run, None, torch.device("cpu"))
    assert prompt_ids[0].tolist() == ours_tokenizer.encode(prompt)
    eos = ours_tokenizer.encode(EOT)[0]
    ours = generate(params, config, ours_tokenizer.encode(prompt), 50, temperature=0.0, eos_id=eos,
                    num_valid_tokens=max(ours_tokenizer.vocab) + 1)
    assert len(ours) == 50 and eos not in ours  # the whole 50, not an early stop
    assert theirs == ours
    capsys.readouterr()
    generate_main(["--run", str(trained_run), "--sample.prompt", prompt, "--sample.tokens", "50", "--sample.temperature", "0"])
    assert capsys.readouterr().out == prompt + tokenizer.decode(theirs, skip_special_tokens=True) + "\n"


def test_ids_the_tokenizer_lacks_are_suppressed_in_generation(trained_run, exported):
    _, config, tokenizer = load_run(trained_run, None, torch.device("cpu"))
    unused = list(range(max(tokenizer.vocab) + 1, config.vocab_size))
    assert unused  # the fixture's corpus runs out of merges before vocab_size
    settings = json.loads((exported / "generation_config.json").read_text())
    assert settings["suppress_tokens"] == unused and settings["eos_token_id"] == tokenizer.encode(EOT)[0]


def test_the_exported_tokenizer_gives_our_ids_including_the_special_token(trained_run, exported):
    _, _, ours = load_run(trained_run, None, torch.device("cpu"))
    theirs = transformers.AutoTokenizer.from_pretrained(exported)
    texts = [f"Once upon a time{EOT}the cat  sat.\n\n  Été 🙂 'll {EOT}{EOT}x", synthetic_text(5, 2, 60)]
    for name in ("tinystories_valid.txt", "owt_sample.txt"):
        texts.append(shared_path(f"data/{name}").read_text(encoding="utf-8")[:20_000])
    for text in texts:
        ids = ours.encode(text)
        assert theirs(text).input_ids == ids
        assert theirs.decode(ids) == text
    assert theirs.eos_token == theirs.bos_token == EOT and theirs.eos_token_id == ours.encode(EOT)[0]
    assert theirs.convert_ids_to_tokens(ours.encode(EOT)) == [EOT]


def test_a_bfloat16_export_stores_our_weights_rounded(trained_run, tmp_path):
    folder = export_run(trained_run, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in safetensors_torch.load_file(folder / "model.safetensors").values()} == {torch.bfloat16}
    params, config, _ = load_run(trained_run, None, torch.device("cpu"))
    imported, imported_config = load_hf(folder)
    assert imported_config.architecture_changes(config) == []
    for name, tensor in flatten(params).items():
        assert torch.equal(flatten(imported)[name], tensor.to(torch.bfloat16).float()), name


def test_the_model_card_reports_the_run(trained_run, exported):
    card = (exported / "README.md").read_text()
    summary = json.loads((trained_run / SUMMARY_FILE).read_text())
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"{summary['parameters']:,}-parameter" in card
    assert f"step {summary['step']}, {summary['tokens']:,} tokens seen" in card
    assert f"train loss {summary['train_loss']:.4f}, validation loss {summary['val_loss']:.4f}" in card
    assert "just train tinystories --config train.json" in card and '"d_model": 32' in card
    assert str(trained_run.parent) not in card  # local folders are not part of the model
    assert "AutoModelForCausalLM.from_pretrained" in card


# -- import ----------------------------------------------------------------------------------------


def transformers_llama(folder: Path, tie: bool, **changes: object) -> "transformers.LlamaForCausalLM":
    """A LlamaForCausalLM initialised by transformers itself (no weights of ours), saved to `folder`."""
    config = transformers.LlamaConfig(
        vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=24, rope_theta=2000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie, **changes,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:  # ones would hide a mix-up of the two norms of a block
                parameter.normal_(1.0, 0.2)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_a_llama_made_by_transformers_imports_and_computes_its_logits(tmp_path, tie):
    model = transformers_llama(tmp_path, tie)
    params, config = load_hf(tmp_path)
    assert (config.d_model, config.num_heads, config.d_ff, config.context_length, config.rope_theta, config.tie_embeddings) == \
        (48, 4, 80, 24, 2000.0, tie)
    tokens = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model(tokens).logits
    torch.testing.assert_close(forward(params, tokens, config), theirs, atol=1e-5, rtol=1e-5)
    stored = safetensors_torch.load_file(tmp_path / "model.safetensors")
    exported = to_hf_state_dict(params, config)
    assert exported.keys() == stored.keys()
    assert all(torch.equal(exported[name], stored[name]) for name in stored)


def test_a_pickled_state_dict_imports_the_same(tmp_path):
    model = transformers_llama(tmp_path / "safe", tie=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    safe, _ = load_hf(tmp_path / "safe")
    from_pickle, _ = load_hf(pickled)
    assert all(torch.equal(flatten(safe)[name], t) for name, t in flatten(from_pickle).items())


class Payload:
    """Not a tensor: weights_only=True must refuse to unpickle it."""


@pytest.fixture
def llama_folder(tmp_path) -> Path:
    folder = tmp_path / "llama"
    transformers_llama(folder, tie=False)
    return folder


def edit_config(folder: Path, **changes: object) -> None:
    values = json.loads((folder / "config.json").read_text())
    values.update(changes)
    (folder / "config.json").write_text(json.dumps(values))


@pytest.mark.parametrize("changes, message", [
    ({"num_key_value_heads": 2}, "num_key_value_heads 2 != num_attention_heads 4: grouped-query attention"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 2000.0}}, "rope scaling 'linear'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
    ({"attention_bias": True}, "attention_bias true: biases are not supported"),
    ({"mlp_bias": True}, "mlp_bias true: biases are not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"head_dim": 16}, "head_dim 16 is not hidden_size / num_attention_heads"),
    ({"intermediate_size": 64}, r"gate_proj.weight is a torch.float32 tensor of shape \(80, 48\), the config expects .* \(64, 48\)"),
])
def test_import_refuses_what_our_forward_cannot_compute_in_one_line(llama_folder, changes, message):
    edit_config(llama_folder, **changes)
    with pytest.raises(UsageError) as refused:
        load_hf(llama_folder)
    assert "\n" not in str(refused.value) and re.search(message, str(refused.value)), str(refused.value)


def test_import_refuses_bad_weights_in_one_line(llama_folder):
    state = safetensors_torch.load_file(llama_folder / "model.safetensors")
    cases = {
        "biases are not supported": {**state, "model.layers.0.self_attn.q_proj.bias": torch.zeros(48)},
        r"missing \[model.norm.weight\]": {k: v for k, v in state.items() if k != "model.norm.weight"},
        r"model.norm.weight is a torch.float32 tensor of shape \(47,\)": {**state, "model.norm.weight": torch.ones(47)},
    }
    for message, tensors in cases.items():
        safetensors_torch.save_file(tensors, llama_folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(UsageError, match=message) as refused:
            load_hf(llama_folder)
        assert "\n" not in str(refused.value)
    (llama_folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="could not be read as safetensors"):
        load_hf(llama_folder)
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="holds no model.safetensors or pytorch_model.bin"):
        load_hf(llama_folder)
    torch.save({"weights": Payload()}, llama_folder / "pytorch_model.bin")
    with pytest.raises(UsageError, match=r"could not be read \(weights_only=True\)"):
        load_hf(llama_folder)
    with pytest.raises(UsageError, match="config.json not found"):
        load_hf(llama_folder.parent)


# -- export refusals: one line, nothing written -----------------------------------------------------


def refused_export(argv: list[str], out: Path) -> str:
    before = sorted(out.parent.iterdir()) if out.parent.exists() else None
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--out", str(out)])
    message = str(refused.value)
    assert message.startswith("error: ") and "\n" not in message
    assert (sorted(out.parent.iterdir()) if out.parent.exists() else None) == before  # nothing written, no debris
    return message


@pytest.mark.parametrize("changes, setting", [
    ({"norm": "post"}, "norm='post'"), ({"norm": "none"}, "norm='none'"), ({"position": "none"}, "position='none' (NoPE)"),
    ({"ffn": "silu"}, "ffn='silu'"), ({"ffn": "relu2"}, "ffn='relu2'"), ({"qk_norm": True}, "qk_norm=True"),
    ({"logit_softcap": 30.0}, "logit_softcap=30.0"), ({"value_residual": True}, "value_residual=True"),
])
def test_export_refuses_what_llama_cannot_compute_by_name(trained_run, tmp_path, changes, setting):
    run = variant_run(trained_run, tmp_path / "run", **changes)
    message = refused_export(["--run", str(run)], tmp_path / "exports" / "model")
    assert f"cannot export to the Llama format: {setting}" in message


def test_export_refuses_an_existing_out_and_leaves_it_alone(trained_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    message = refused_export(["--run", str(trained_run)], out)
    assert "already exists" in message and (out / "mine.txt").read_text() == "keep me"
    assert "--dtype int8: must be one of" in refused_export(["--run", str(trained_run), "--dtype", "int8"], tmp_path / "new")
    assert "does not exist" in refused_export(["--run", str(tmp_path / "missing")], tmp_path / "new")


def test_export_without_safetensors_names_the_extra(trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # importing it now raises ImportError
    message = refused_export(["--run", str(trained_run)], tmp_path / "new")
    assert message == 'error: safetensors is not installed; install the hf extra: pip install -e ".[hf]"'


def test_an_export_that_fails_midway_leaves_no_folder(trained_run, tmp_path, monkeypatch):
    written = []
    write_bytes = Path.write_bytes

    def failing_write(path, data):
        written.append(Path(path).name)
        if Path(path).name == "README.md":
            raise OSError(28, os.strerror(28))  # ENOSPC on the last file
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    out = tmp_path / "exports" / "model"
    message = refused_export(["--run", str(trained_run)], out)
    assert "No space left on device" in message and written[-1] == "README.md" and len(written) == 7
    assert message == f"error: cannot write {out}: No space left on device"  # the folder, not a temporary gone by now


def test_the_guides_export_commands_name_real_flags():
    guide = ROOT / "docs" / "export.md"
    blocks = re.findall(r"```bash\n(.*?)```", guide.read_text(), flags=re.S)
    commands = [shlex.split(line.split("  #")[0])[2:] for block in blocks for line in block.splitlines() if line.startswith("just export ")]
    assert len(commands) >= 2
    for args in commands:
        parser().parse_args(args)  # an unknown or missing flag exits here
