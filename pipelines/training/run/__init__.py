"""A training run from start to finish: start, the loop, evaluation, samples, signals, summary."""
