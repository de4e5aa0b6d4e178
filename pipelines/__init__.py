"""Everything that touches the world: files, processes, devices, command lines, logs and plots."""
