"""Tokenizers from files: training one, encoding text files into token ids, and the file cutting both share."""
