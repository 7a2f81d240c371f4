"""Test-session setup shared by every test file."""
import atexit
import os
import shutil
import tempfile

# A fresh inductor cache per test session: AOTAutograd's cache is keyed on the forward
# graph, so a cache left by an older build could replay a stale backward of our ops.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsekern-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. The variable
# must be set before triton is first imported, hence here, before any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `make cuda-emulate` runs tests/cuda_emulation (g++ and sanitizer builds, minutes); `make test` does not.
collect_ignore = ["cuda_emulation"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread (and don't stall when the 2 CI cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
