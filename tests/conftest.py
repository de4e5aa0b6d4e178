"""Fixtures shared by the tests of this folder."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """For tests of tiny models: intra-op threads gain nothing there, and on a loaded machine
    their spin-waits turn milliseconds into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
