"""Pure functions: tensors and pytrees in, tensors and pytrees out. No files, no global state."""
