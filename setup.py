"""Builds sparsekern._C: CPU kernels always, CUDA kernels when torch and nvcc have CUDA.

SPARSEKERN_BUILD=cpu|cuda|auto (default auto) forces the choice; `cuda` without
nvcc is an error. SPARSEKERN_CPU_ARCH (default `native`) is the -march of the CPU
kernels: a source build runs where it is compiled, so it uses that CPU's vector
units (as torch.compile's CPU code does); `portable` for a wheel that travels. CUDA archs come from TORCH_CUDA_ARCH_LIST (default 9.0).
Fast-math is never used: gates and the RNG must match the other backends bit for bit.
"""
from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _sources(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, pattern)))


def _want_cuda() -> bool:
    mode = os.environ.get("SPARSEKERN_BUILD", "auto").strip().lower() or "auto"
    if mode not in ("cpu", "cuda", "auto"):
        raise SystemExit(f"SPARSEKERN_BUILD must be cpu, cuda or auto, got {mode!r}")
    if mode == "cpu":
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    has_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if mode == "cuda":
        if torch.version.cuda is None:
            raise SystemExit("SPARSEKERN_BUILD=cuda but this torch has no CUDA (torch.version.cuda is None)")
        if not has_nvcc or not _sources("cuda/*.cu"):
            raise SystemExit("SPARSEKERN_BUILD=cuda but nvcc was not found (set CUDA_HOME) or csrc/cuda is empty")
        return True
    return torch.version.cuda is not None and has_nvcc and bool(_sources("cuda/*.cu"))


def _cpu_arch_flags() -> list[str]:
    arch = os.environ.get("SPARSEKERN_CPU_ARCH", "native").strip() or "native"
    return [] if arch == "portable" else [f"-march={arch}"]


def _extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    # No fast-math: -fno-trapping-math only lets GCC if-convert (vectorize) the branch-free
    # gate math; it changes no result. -ffp-contract=off keeps results identical across builds.
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wall"] + _cpu_arch_flags()
    sources = _sources("ops.cpp") + _sources("extension.cpp") + _sources("cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if _want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "sparsekern._C",
            sources + _sources("cuda/*.cu"),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DSPARSEKERN_WITH_CUDA"], "nvcc": nvcc + ["-DSPARSEKERN_WITH_CUDA"]},
        )
    return CppExtension("sparsekern._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx})


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=[_extension()], cmdclass={"build_ext": _build_ext()})
