"""The handout's experiments: sweeps, the experiment log, plots, accounting and tokenizer reports."""
