"""What a run is: its config dataclasses, the presets, and the optimizer a config describes."""
