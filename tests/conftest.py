"""Settings shared by every test module."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every model in the tests is tiny: one intra-op thread avoids threading overhead, and on a busy
    2-core machine oversubscribed OpenMP threads made steps ~10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
