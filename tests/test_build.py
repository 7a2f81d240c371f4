"""The compiled library: op schemas/fakes pass opcheck, and a CMake build of the same
csrc/ gives the same results as the setup.py build (sparsekern._C)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import inspect

import pytest
import torch

import sparsekern
import sparsekern.backends.compiled  # noqa: F401  (registers the fake kernels of sparsekern_C)
from sparsekern.backends import extension as _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HC = (2.0 / 3.0, -0.1, 1.1)
SEED, OFFSET = -5, 2**40 + 3  # int64 seeds/offsets as the schema takes them (-5 is 2**64 - 5)

pytestmark = pytest.mark.skipif(not _extension.compiled_available(), reason="sparsekern._C is not built")


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(9, 37, generator=g)
    return {
        "w": w,
        "g": torch.randn(9, 37, generator=g),
        "w_bf16": w.bfloat16(),
        "g_bf16": torch.randn(9, 37, generator=g).bfloat16(),
        "w_f64": w.double(),
        "s1": torch.tensor([-1.2]),
        "s_rows": torch.randn(9, generator=g) - 1.0,
        "la": torch.randn(9, 37, generator=g) * 2,
        "la_rows": torch.randn(9, generator=g) * 2,
        "x": torch.randn(4, 6, 5, 3, generator=g),
        "gx": torch.randn(4, 6, 5, 3, generator=g),
        "la_c": torch.randn(6, generator=g) * 2,
        "scalar_grad": torch.tensor(0.75),
        "u_out": torch.empty(1000),
    }


# (op, args): a string "@name" is an input tensor, anything else a literal.
CASES = [
    ("soft_threshold", ["@w", "@s1"]),
    ("soft_threshold", ["@w_bf16", "@s_rows"]),
    ("soft_threshold", ["@w_f64", "@s_rows"]),
    ("soft_threshold_backward", ["@g", "@w", "@s1"]),
    ("soft_threshold_backward", ["@g_bf16", "@w_bf16", "@s_rows"]),
    ("hard_concrete", ["@la", SEED, OFFSET, *HC]),
    ("hard_concrete_backward", ["@g", "@la", SEED, OFFSET, *HC]),
    ("hard_concrete_eval", ["@la", -0.1, 1.1]),
    ("hard_concrete_eval_backward", ["@g", "@la", -0.1, 1.1]),
    ("l0_norm", ["@la", *HC]),
    ("l0_norm_backward", ["@scalar_grad", "@la", *HC]),
    ("gated_weight", ["@w", "@la", SEED, OFFSET, *HC]),
    ("gated_weight", ["@w_bf16", "@la_rows", SEED, OFFSET, *HC]),
    ("gated_weight_backward", ["@g", "@w", "@la", SEED, OFFSET, *HC]),
    ("gated_weight_backward", ["@g", "@w", "@la_rows", SEED, OFFSET, *HC]),
    ("gated_activation", ["@x", "@la_c", SEED, OFFSET, *HC]),
    ("gated_activation_backward", ["@gx", "@x", "@la_c", SEED, OFFSET, *HC]),
    ("uniform", ["@u_out", SEED, OFFSET]),
]


def _run_cases(ops, tensors):
    """Runs CASES on fresh copies of the inputs; returns a flat list of result tensors."""
    results = []
    for name, spec in CASES:
        args = [tensors[a[1:]].clone() if isinstance(a, str) else a for a in spec]
        out = getattr(ops, name)(*args)
        if out is None:  # the mutating uniform op: its result is the filled buffer
            out = args[0]
        results.extend(out if isinstance(out, (tuple, list)) else [out])
    return results


@pytest.mark.parametrize("name,spec", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_opcheck(name, spec):
    tensors = _inputs()
    args = [tensors[a[1:]] if isinstance(a, str) else a for a in spec]
    torch.library.opcheck(getattr(torch.ops.sparsekern_C, name).default, args)


def test_backends_listed():
    assert "cpu" in sparsekern.available_backends()


def _child_script() -> str:
    """Runs CASES with a library loaded by path, without importing sparsekern
    (whose _C defines the same op namespace)."""
    return "\n".join([
        "import sys, torch",
        "torch.ops.load_library(sys.argv[1])",
        f"CASES = {CASES!r}",
        inspect.getsource(_run_cases),
        "tensors = torch.load(sys.argv[2], weights_only=True)",
        "torch.save(_run_cases(torch.ops.sparsekern_C, tensors), sys.argv[3])",
    ])


@pytest.mark.slow  # a second full build of the extension: minutes on 2 cores
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_matches_extension(tmp_path):
    build = tmp_path / "build"
    prefix = torch.utils.cmake_prefix_path
    subprocess.run(
        ["cmake", "-S", ROOT, "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release",
         f"-DSPARSEKERN_CPU_ARCH={os.environ.get('SPARSEKERN_CPU_ARCH', 'native')}"],
        check=True, capture_output=True, text=True,
    )
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True, capture_output=True,
                   text=True)
    libs = [p for p in build.iterdir() if p.name.startswith("libsparsekern_ops")]
    assert libs, f"no library built in {build}"

    tensors = _inputs()
    torch.save(tensors, tmp_path / "inputs.pt")
    (tmp_path / "child.py").write_text(_child_script())
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(libs[0]), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    ours = _run_cases(torch.ops.sparsekern_C, tensors)
    assert len(theirs) == len(ours)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == b.dtype and a.shape == b.shape, k
        # Same compiler and flags: identical bits.
        assert torch.equal(a.view(torch.uint8) if a.dim() else a.reshape(1).view(torch.uint8),
                           b.view(torch.uint8) if b.dim() else b.reshape(1).view(torch.uint8)), k
