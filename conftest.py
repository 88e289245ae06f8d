"""Repository-wide pytest setup.

The networks here are small: PyTorch's intra-op thread pool costs more than it gives on them,
and on a busy 2-core machine its spinning threads slow training by an order of magnitude.
Tests (and doctests) therefore run torch single-threaded, as the service does by default.
"""

import torch


def pytest_configure(config):
    torch.set_num_threads(1)
