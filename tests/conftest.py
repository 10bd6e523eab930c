"""Suite-wide settings: tiny models run fastest on one thread (on a busy 2-core machine a tiny
matmul took 14 ms with two threads and 7 us with one), and the suite is full of tiny models."""

import pytest
import torch

from parallel_r1.engine.testing import char_tokenizer
from parallel_r1.structure import tag_ids

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    """The engine tests' character tokenizer with the six tags (a module may define its own)."""
    return char_tokenizer()


@pytest.fixture(scope="module")
def tags(tok):
    """Tag name -> token id under ``tok``."""
    return tag_ids(tok)
