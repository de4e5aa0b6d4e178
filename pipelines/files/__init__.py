"""Writing files and folders whole or not at all, shared by every command that writes."""
