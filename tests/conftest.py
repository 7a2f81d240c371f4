"""Test-session setup shared by every test file."""
import os

import torch

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. The variable
# must be set before triton is first imported, hence here, before any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
