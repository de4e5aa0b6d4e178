"""What a run directory holds: its layout, lock, checkpoints and their checks, the metrics log."""
