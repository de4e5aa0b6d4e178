"""Fixtures the test modules share (the project-wide ones, for properties/ too, are in the root
conftest.py)."""

import socket
from pathlib import Path

import pytest

from tests.inputs import EOT, STORY
from tests.runs import token_data


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    """tests/runs.py's token_data in vocab 32, for TINY runs."""
    return token_data(tmp_path / "data")


@pytest.fixture
def byte_data_dir(tmp_path: Path) -> Path:
    """token_data in vocab 256 with a byte tokenizer beside it, so a finished run writes samples."""
    return token_data(tmp_path / "data", 256, byte_tokenizer=True)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small text of 40 stories, each followed by EOT, to train and run tokenizers on."""
    path = tmp_path / "in.txt"
    path.write_text((STORY + EOT + "\n") * 40, encoding="utf-8")
    return path


@pytest.fixture
def refused_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connections are refused at once, as offline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
