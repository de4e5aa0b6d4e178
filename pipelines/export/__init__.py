"""Exporting a trained run to a Hugging Face `transformers` folder (`just export`)."""
