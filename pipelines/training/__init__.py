"""Training runs: the config, the loop around the pure step, data, checkpoints and the run directory."""
