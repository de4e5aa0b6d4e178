"""Data parallelism on torch.distributed: the process group, the gradient average, sharded state."""
