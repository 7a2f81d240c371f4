"""The emulation can fail: copies of the kernels with a tail guard or a __syncthreads removed
must fail the driver (wrong values, or a sanitizer report). Each edit must match the source
(emu_prepare.py raises otherwise), so a renamed line cannot make this pass vacuously."""
from __future__ import annotations

import pytest

import emu_build as build
from test_sanitizers import run_driver

MUTANTS = {
    # store_chunk's scalar path writes past n: ASan sees the step past the buffer.
    "store-tail-guard": (r"if \(i \+ k < n\) (p\[i \+ k\] = from_f32<T>\(v\[k\]\);)", r"\1",
                         "cuda/device_utils.cuh", "address", (), ("AddressSanitizer", "MISMATCH")),
    # block_sum: thread 0 reads the warps' sums before they are all written: TSan sees the race.
    "block-sum-syncthreads": (r"(scratch\[warp\] = v;\n)\s*__syncthreads\(\);\n", r"\1",
                              "cuda/device_utils.cuh", "tsan", ("reduced",), ("ThreadSanitizer", "MISMATCH")),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_fails(name, tmp_path):
    pattern, repl, path, kind, args, signs = MUTANTS[name]
    exe = build.driver(kind, src_root=str(tmp_path / "src"), mutations=[(pattern, repl, path)],
                       out=str(tmp_path / f"driver-{kind}"))
    proc = run_driver(exe, *args)
    assert proc.returncode != 0, f"mutant {name} passed the driver:\n{proc.stdout}"
    assert any(s in proc.stderr for s in signs), f"mutant {name} failed without a finding:\n{proc.stderr[-3000:]}"
