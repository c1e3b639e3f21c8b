"""Settings shared by every test module."""

import pytest
import torch

from xlnet_ref.training.corpus import default_corpus_text


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every model in the tests is tiny: one intra-op thread avoids threading overhead, and on a busy
    2-core machine oversubscribed OpenMP threads made steps ~10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """~1300 characters of real text: an epoch is a dozen batches, so runs cross epoch boundaries."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(default_corpus_text()[:1300], encoding="utf-8")
    return path
