"""The run's tokenizer as `transformers` loads it: tokenizer.json, tokenizer_config.json and
special_tokens_map.json.

tokenizer.json is written as plain JSON rather than through the `tokenizers` library: its format
(a BPE model with a byte-level pre-tokenizer and decoder) is stable and documented, our vocab and
merges go into it unchanged, and export then needs nothing beyond `safetensors`. The tests hold it
to the real library: `tokenizers` and AutoTokenizer must give our ids.

Pre-tokenization: `tokenizers`' ByteLevel with use_regex applies GPT-2's pattern, ours
(core/pretokenize.py); the property tests check the two agree on arbitrary text. Special tokens
are "added tokens" that are cut out before pre-tokenization, longest first, as ours are.
"""

import json
from typing import Any

from core.bytes_unicode import to_printable
from core.errors import UsageError
from core.tokenizer import Tokenizer
from pipelines.generate import EOT

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """tokenizer.json of `tokenizers` for our byte-level BPE: the same vocab, merges and specials."""
    vocab = {to_printable(token): i for i, token in sorted(tokenizer.vocab.items())}
    if len(vocab) != len(tokenizer.vocab):
        raise UsageError("the tokenizer gives one token two ids; tokenizer.json cannot express that")
    added = [
        {"id": tokenizer.encode(special)[0], "content": special, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for special in tokenizer.special_tokens
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": sorted(added, key=lambda token: token["id"]),
        "normalizer": None,
        "pre_tokenizer": _BYTE_LEVEL,
        "post_processor": None,  # no BOS or EOS is added around an encoded text, as here
        "decoder": _BYTE_LEVEL,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab,
            # "A B" strings, which every `tokenizers` version reads: printable tokens hold no space.
            "merges": [f"{to_printable(left)} {to_printable(right)}" for left, right in tokenizer.merges],
        },
    }


def special_tokens_map(tokenizer: Tokenizer) -> dict[str, Any]:
    """<|endoftext|> as the beginning and end of a document; any other specials as additional."""
    mapping: dict[str, Any] = {"bos_token": EOT, "eos_token": EOT} if EOT in tokenizer.special_tokens else {}
    others = [special for special in tokenizer.special_tokens if special != EOT]
    if others:
        mapping["additional_special_tokens"] = others
    return mapping


def tokenizer_config(tokenizer: Tokenizer, context_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the generic fast tokenizer over tokenizer.json (naming no class,
    transformers would build Llama's own, a different tokenizer), nothing added around a text,
    and decoding without GPT-2-era space clean-up, so that decode(encode(text)) == text."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special_tokens_map(tokenizer),
    }


def as_json(values: dict[str, Any]) -> bytes:
    return (json.dumps(values, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
