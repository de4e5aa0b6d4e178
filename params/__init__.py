"""Parameter pytrees: building, naming, loading, and the thin nn.Module shells that hold them."""
