"""Test-session setup shared by every test file."""
import os

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. The variable
# must be set before triton is first imported, hence here, before any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread (and don't stall when the 2 CI cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
