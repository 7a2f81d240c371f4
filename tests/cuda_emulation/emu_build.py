"""Builds the emulated CUDA kernels with g++: the torch op library `sparsekern_emu` (the value
tests) and the torch-free driver (driver.cpp) with sanitizers.

    python3 tests/cuda_emulation/emu_build.py    # both, incremental, under build/cuda-emulation/
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from emu_prepare import ROOT, prepare  # noqa: E402

OUT = os.path.join(ROOT, "build", "cuda-emulation")
# -O2 like the prototype that miscompiled the uint4 type punning; no fast-math, no FMA
# contraction: the CPU kernels' rounding, so results can be compared bit for bit.
CXXFLAGS = ["-O2", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
# The sanitizer builds at -O1 (their usual level, and half the compile time of -O2).
SANITIZERS = {
    "plain": [],
    "asan": ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
    "tsan": ["-O1", "-fsanitize=thread"],
    "address": ["-O1", "-fsanitize=address", "-fno-omit-frame-pointer"],  # ASan alone: a cheaper mutant build
}


def _includes(src_root: str) -> list[str]:
    csrc = os.path.join(src_root, "csrc")
    return [os.path.join(HERE, "include"), HERE, os.path.join(csrc, "include"), csrc]


def torch_library(verbose: bool = False) -> str:
    """Builds (ninja, incremental) and returns the path of the sparsekern_emu library."""
    from torch.utils.cpp_extension import load

    src_root = os.path.join(OUT, "src")
    sources = prepare(src_root)
    build_dir = os.path.join(OUT, "torch")
    os.makedirs(build_dir, exist_ok=True)
    load(
        name="sparsekern_emu",
        sources=[sources["elementwise_kernels"], sources["row_kernels"], sources["ops_cuda"],
                 os.path.join(HERE, "binding.cpp")],
        extra_include_paths=_includes(src_root),
        extra_cflags=CXXFLAGS,
        build_directory=build_dir,
        is_python_module=False,
        verbose=verbose,
    )
    return os.path.join(build_dir, "sparsekern_emu.so")


def driver(kind: str, src_root: str | None = None, mutations=(), out: str | None = None) -> str:
    """The torch-free driver of every launcher, built with sanitizer set `kind`; returns its path.

    With `mutations`, a fresh copy of csrc is prepared under src_root first (the mutation test).
    """
    src_root = src_root or os.path.join(OUT, "src")
    sources = prepare(src_root, mutations)
    out = out or os.path.join(OUT, f"driver-{kind}")
    inputs = [sources["elementwise_kernels"], sources["row_kernels"], os.path.join(HERE, "driver.cpp")]
    if os.path.exists(out) and not mutations:
        deps = inputs + [os.path.join(HERE, "emulation.h")] + [
            os.path.join(d, f) for d, _, fs in os.walk(os.path.join(src_root, "csrc")) for f in fs]
        if os.path.getmtime(out) >= max(os.path.getmtime(p) for p in deps):
            return out
    flags = ["-std=c++20", "-g1"] + CXXFLAGS + SANITIZERS[kind] + [f"-I{p}" for p in _includes(src_root)]
    objects = [f"{out}.{os.path.basename(src)}.o" for src in inputs]
    procs = [subprocess.Popen(["g++", *flags, "-c", src, "-o", obj], stderr=subprocess.PIPE, text=True)
             for src, obj in zip(inputs, objects)]  # one compiler per source: they run in parallel
    errors = [p.communicate()[1] for p in procs]
    link = subprocess.run(["g++", *flags, *objects, "-o", out, "-pthread"], capture_output=True, text=True) \
        if all(p.returncode == 0 for p in procs) else None
    if link is None or link.returncode != 0:
        detail = "".join(errors) + (link.stderr if link else "")
        raise RuntimeError(f"cuda emulation: building the {kind} driver failed:\n{detail[-6000:]}")
    return out


def main() -> None:
    t0 = time.time()
    lib = torch_library(verbose="-v" in sys.argv)
    print(f"cuda emulation: {os.path.relpath(lib, ROOT)} ({time.time() - t0:.0f} s)")
    for kind in ("asan", "tsan"):
        t0 = time.time()
        path = driver(kind)
        print(f"cuda emulation: {os.path.relpath(path, ROOT)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
