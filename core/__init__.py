"""Pure functions: tensors and pytrees in, tensors and pytrees out.

No files, except `Tokenizer.from_files`: the handout's interface requires that classmethod, so it
reads vocab.json and merges.txt itself (through `parse_vocab` / `parse_merges`); directories of
tokenizer files are read and written in pipelines/tokenizer/store.py. No global state, except
memos of pure functions: the RoPE tables (core/attention.py) and GPT-2's byte alphabet
(core/bytes_unicode.py). No randomness except from a generator passed in; `core.sampling.generate`
falls back to torch's global RNG when given none, as torch's own samplers do."""
