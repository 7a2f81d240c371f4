"""Builds sparsekern._C: CPU kernels always, CUDA kernels when torch and a CUDA toolkit allow.

Environment:
  SPARSEKERN_BUILD=auto|cpu|cuda   auto (default) builds CUDA when it can and otherwise says
                                   why in one line and builds the CPU extension; cuda makes
                                   that line an error.
  CUDA_HOME / CUDA_PATH            the toolkit; unset, the toolkit of the `nvcc` on PATH
                                   (wrappers and symlinks followed).
  TORCH_CUDA_ARCH_LIST             GPU targets; default "8.0;9.0;10.0+PTX" (A100, H100,
                                   B200 SASS plus PTX for newer GPUs), so a wheel travels.
                                   Set e.g. "9.0" for a faster build for one GPU.
  SPARSEKERN_CPU_ARCH              -march of the CPU kernels; default `native` (a source build
                                   runs where it is compiled); `portable` for a wheel that travels.
Fast-math is never used: gates and the RNG must match the other backends bit for bit.
Every build ends with a load check of the new library in a child process (a C++ abort
there fails the build, not a later `import sparsekern`).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_HELPERS = os.path.join(ROOT, "sparsekern", "_build")
DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0+PTX"


def _load_helper(name: str):
    """A module of sparsekern/_build, loaded by path: the package itself is not built yet."""
    spec = importlib.util.spec_from_file_location(f"_sparsekern_build_{name}", os.path.join(BUILD_HELPERS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _sources(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join("csrc", pattern)))


def _cuda_toolkit() -> tuple[str | None, str]:
    """(toolkit root, None) when the CUDA extension can be built, else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if torch.version.cuda is None:
        return None, f"this torch ({torch.__version__}) has no CUDA"
    if not _sources("cuda/*.cu"):
        return None, "csrc/cuda has no sources"
    toolkit = _load_helper("cuda_toolkit")
    found = toolkit.find_toolkit()
    if found.home is None:
        return None, found.reason
    major, torch_major = toolkit.nvcc_major(found.home), int(torch.version.cuda.split(".")[0])
    if major != torch_major:
        return None, f"nvcc in {found.home} is CUDA {major}, torch was built with CUDA {torch.version.cuda}"
    return found.home, found.reason


def _want_cuda() -> bool:
    mode = os.environ.get("SPARSEKERN_BUILD", "auto").strip().lower() or "auto"
    if mode not in ("cpu", "cuda", "auto"):
        raise SystemExit(f"SPARSEKERN_BUILD must be cpu, cuda or auto, got {mode!r}")
    if mode == "cpu":
        print("sparsekern: building the CPU extension (SPARSEKERN_BUILD=cpu)")
        return False
    home, reason = _cuda_toolkit()
    if home is None:
        if mode == "cuda":
            raise SystemExit(f"sparsekern: SPARSEKERN_BUILD=cuda, but CUDA cannot be used: {reason}")
        print(f"sparsekern: building the CPU extension only, CUDA cannot be used: {reason}")
        return False
    # torch.utils.cpp_extension reads CUDA_HOME when it is first imported, which is below.
    os.environ["CUDA_HOME"] = home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    print(f"sparsekern: building CPU and CUDA kernels with {reason}, archs {os.environ['TORCH_CUDA_ARCH_LIST']}")
    return True


def _cpu_arch_flags() -> list[str]:
    arch = os.environ.get("SPARSEKERN_CPU_ARCH", "native").strip() or "native"
    return [] if arch == "portable" else [f"-march={arch}"]


def _openmp_flags() -> list[str]:
    """-fopenmp where torch's intra-op threads are OpenMP (Linux wheels).

    at::parallel_for is a header template: compiled without -fopenmp it runs its whole range on
    the calling thread, so every CPU kernel used one core whatever torch.set_num_threads said.
    The library then links libgomp.so.1, the soname torch already loaded (one OpenMP runtime)."""
    import torch

    if sys.platform != "linux" or not torch.backends.openmp.is_available():
        return []
    return ["-fopenmp"]


def _extension(with_cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    # No fast-math: -fno-trapping-math only lets GCC if-convert (vectorize) the branch-free
    # gate math; it changes no result. -ffp-contract=off keeps results identical across builds.
    openmp = _openmp_flags()
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wall"] + _cpu_arch_flags() + openmp
    sources = _sources("ops.cpp") + _sources("autograd.cpp") + _sources("extension.cpp") + _sources("cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if with_cuda:
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DSPARSEKERN_WITH_CUDA"]
        return CUDAExtension("sparsekern._C", sources + _sources("cuda/*.cu"), include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx + ["-DSPARSEKERN_WITH_CUDA"], "nvcc": nvcc},
                             extra_link_args=openmp)
    return CppExtension("sparsekern._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                        extra_link_args=openmp)


def _build_ext(with_cuda: bool):
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildAndCheck(base):
        def run(self):
            if self.inplace or getattr(self, "editable_mode", False):
                # pip's editable installs build in a fresh temporary directory every time; a
                # fixed one per configuration lets ninja rebuild only what changed.
                import torch

                kind = "cuda" if with_cuda else "cpu"
                tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{kind}"
                self.build_temp = os.path.join(ROOT, "build", f"temp-{tag}")
            super().run()
            for ext in self.extensions:
                self._check_loads(self.get_ext_fullpath(ext.name))

        def _check_loads(self, library: str):
            keys = "CPU,CUDA" if with_cuda else "CPU"
            script = os.path.join(BUILD_HELPERS, "library_check.py")
            proc = subprocess.run([sys.executable, script, "--library", os.path.abspath(library), "--keys", keys],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                detail = (proc.stderr or proc.stdout).strip()[-4000:]
                raise SystemExit(f"sparsekern: the built library {library} fails to load "
                                 f"(exit {proc.returncode}):\n{detail}")
            print("sparsekern: " + proc.stdout.strip())

    return BuildAndCheck


WITH_CUDA = _want_cuda()
setup(ext_modules=[_extension(WITH_CUDA)], cmdclass={"build_ext": _build_ext(WITH_CUDA)})
