"""Where tokens come from: download, tokenizer training and encoding, token files and batches."""
