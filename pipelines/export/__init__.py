"""Exporting a trained run to a Hugging Face `transformers` folder (`just export`)."""

from pipelines.export.command import main, parser

__all__ = ["main", "parser"]
