"""Builds (incrementally) and loads the emulated CUDA kernels once per session."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def emu_ops():
    import emu_build as build

    torch.ops.load_library(build.torch_library())
    return torch.ops.sparsekern_emu
