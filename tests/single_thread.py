"""A fixture for tests on tiny tensors: one intra-op thread. With more, each tiny op pays thread synchronisation
(8x slower on a busy 2-core machine) and computes nothing faster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
