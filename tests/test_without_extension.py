"""sparsekern without its compiled extension (not built, or a stale build that fails to load):
it imports with one warning and runs everything on the pure-PyTorch ``torch`` backend, compiled
models included (their gate ops and noise counter through the custom ops)."""
from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = r"""
import importlib.abc, sys, warnings

class NoExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sparsekern._C":
            raise ImportError("sparsekern._C blocked by the test")

sys.meta_path.insert(0, NoExtension())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import sparsekern
assert [str(w.message) for w in caught if "compiled kernels unavailable" in str(w.message)], caught
import torch
from sparsekern.backends import extension as _extension
from sparsekern.ops import noise as noise_ops
from sparsekern.pruning import sparsify
assert not _extension.compiled_available() and sparsekern.available_backends() == ["torch"]
assert not any(noise_ops._COMPILED_TAKE_NOISE.values())

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
sparsify(model, "l0", granularity="weight")
compiled = torch.compile(model, fullgraph=True)
x = torch.randn(4, 6)
for step in range(2):
    loss = compiled(x).square().sum()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
# the compiled steps advanced each layer's counter by its gates per step
assert model[0].noise_offset == 2 * 30 and model[2].noise_offset == 2 * 15
u = sparsekern.uniform(10, 3, 4)
assert u.shape == (10,) and u.dtype == torch.float32
print("OK")
"""


def test_runs_on_the_torch_backend_without_the_extension():
    # no Triton interpreter either (conftest turns it on without a GPU): 'torch' is the one backend
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
