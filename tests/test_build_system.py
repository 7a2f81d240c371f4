"""The build itself: toolkit discovery, the one-declaration rule for kernel signatures,
the child-process load check, and the import-time fallback."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension

from sparsekern.backends import extension as _extension
from sparsekern._build import cuda_toolkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_CHECK = os.path.join(ROOT, "sparsekern", "_build", "library_check.py")


def _executable(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _fake_toolkit(root, runtime: bool = True):
    """A directory shaped like a CUDA toolkit; its nvcc answers -dryrun like the real one."""
    bin_dir = root / "bin"
    _executable(bin_dir / "nvcc", f"#!/bin/sh\necho '#$ _HERE_={bin_dir}' >&2\necho 'release 13.0, V13.0.88'\n")
    if runtime:
        (root / "lib64").mkdir(parents=True)
        (root / "lib64" / "libcudart.so.13").write_text("")
    return root


class TestToolkitDiscovery:
    def test_cuda_home_wins(self, tmp_path):
        home = _fake_toolkit(tmp_path / "cuda")
        found = cuda_toolkit.find_toolkit({"CUDA_HOME": str(home), "PATH": ""})
        assert found.home == str(home) and "$CUDA_HOME" in found.reason

    def test_cuda_path_is_used_when_cuda_home_is_unset(self, tmp_path):
        home = _fake_toolkit(tmp_path / "cuda")
        assert cuda_toolkit.find_toolkit({"CUDA_PATH": str(home), "PATH": ""}).home == str(home)

    def test_cuda_home_without_nvcc_says_so(self, tmp_path):
        found = cuda_toolkit.find_toolkit({"CUDA_HOME": str(tmp_path), "PATH": ""})
        assert found.home is None and "no bin/nvcc" in found.reason

    def test_toolkit_without_runtime_is_refused(self, tmp_path):
        home = _fake_toolkit(tmp_path / "cuda", runtime=False)
        found = cuda_toolkit.find_toolkit({"CUDA_HOME": str(home), "PATH": ""})
        assert found.home is None and "libcudart" in found.reason

    def test_wrapper_script_on_path_is_followed(self, tmp_path):
        # /usr/local/bin/nvcc style: a script that execs the real nvcc elsewhere.
        home = _fake_toolkit(tmp_path / "cuda-13.0")
        _executable(tmp_path / "wrappers" / "nvcc", f'#!/bin/sh\nexec {home}/bin/nvcc "$@"\n')
        found = cuda_toolkit.find_toolkit({"PATH": str(tmp_path / "wrappers")})
        assert found.home == str(home)

    def test_symlink_on_path_is_followed(self, tmp_path):
        home = _fake_toolkit(tmp_path / "cuda-13.0")
        (tmp_path / "links").mkdir()
        os.symlink(home / "bin" / "nvcc", tmp_path / "links" / "nvcc")
        # An nvcc that does not say where it lives: the symlink alone must lead home.
        (home / "bin" / "nvcc").write_text("#!/bin/sh\necho 'release 13.0'\n")
        assert cuda_toolkit.find_toolkit({"PATH": str(tmp_path / "links")}).home == str(home)

    def test_no_nvcc_anywhere(self, tmp_path):
        found = cuda_toolkit.find_toolkit({"PATH": str(tmp_path)}, default_home=str(tmp_path / "none"))
        assert found.home is None and "no nvcc" in found.reason

    def test_default_home_is_tried_last(self, tmp_path):
        """No nvcc on PATH and no CUDA_HOME: /usr/local/cuda, as torch does (the lent GPU machines)."""
        home = _fake_toolkit(tmp_path / "cuda")
        found = cuda_toolkit.find_toolkit({"PATH": str(tmp_path / "empty")}, default_home=str(home))
        assert found.home == str(home) and "no nvcc on PATH" in found.reason
        other = _fake_toolkit(tmp_path / "cuda-13.0")  # an explicit choice still wins
        assert cuda_toolkit.find_toolkit({"CUDA_HOME": str(other), "PATH": ""}, default_home=str(home)).home == str(other)

    def test_nvcc_major(self, tmp_path):
        assert cuda_toolkit.nvcc_major(str(_fake_toolkit(tmp_path / "cuda"))) == 13


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the CPU-only torch's answer")
class TestSetupChoosesBackend:
    def _setup(self, mode: str):
        env = dict(os.environ, SPARSEKERN_BUILD=mode)
        return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)

    def test_auto_says_why_cpu_only_in_one_line(self):
        proc = self._setup("auto")
        assert proc.returncode == 0, proc.stderr
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("sparsekern:")]
        assert lines == [f"sparsekern: building the CPU extension only, CUDA cannot be used: "
                         f"this torch ({torch.__version__}) has no CUDA"]

    def test_forced_cuda_is_an_error_with_the_reason(self):
        proc = self._setup("cuda")
        assert proc.returncode != 0 and "SPARSEKERN_BUILD=cuda, but CUDA cannot be used: this torch" in proc.stderr

    def test_bad_mode_names_the_variable(self):
        proc = self._setup("gpu")
        assert proc.returncode != 0 and "SPARSEKERN_BUILD must be cpu, cuda or auto" in proc.stderr


def _compile_registration(tmp_path, kernel_params: str) -> subprocess.CompletedProcess:
    """Syntax-checks a CPU registration of sparsekern_C::uniform through SK_IMPL."""
    src = tmp_path / "register.cpp"
    src.write_text(textwrap.dedent(f"""
        #include <torch/library.h>
        #include "op_signatures.h"
        void uniform_kernel({kernel_params}) {{}}
        TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {{ SK_IMPL(m, uniform, uniform_kernel); }}
    """))
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{os.path.join(ROOT, 'csrc')}"]
    return subprocess.run(["c++", "-std=c++20", "-fsyntax-only", *includes, str(src)], capture_output=True, text=True,
                          timeout=600)


def test_kernel_signature_mismatch_fails_to_compile(tmp_path):
    """The load-time abort of issue 7 (`Tensor` vs `Tensor&`) is now a compile error."""
    good = _compile_registration(tmp_path, "at::Tensor& out, int64_t seed, int64_t offset")
    assert good.returncode == 0, good.stderr[-3000:]
    bad = _compile_registration(tmp_path, "at::Tensor out, int64_t seed, int64_t offset")
    assert bad.returncode != 0 and "static_cast" in bad.stderr


def _run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, LIBRARY_CHECK, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.skipif(not _extension.compiled_available(), reason="sparsekern._C is not built")
def test_library_check_accepts_the_built_library_and_names_missing_kernels():
    import sparsekern._C as compiled_module

    ok = _run_check("--library", compiled_module.__file__, "--keys", "CPU")
    declared = re.findall(r"^\s*X\((\w+),", open(os.path.join(ROOT, "csrc", "op_signatures.h")).read(), re.M)
    assert len(declared) == 20  # the list csrc/ops.cpp defines: 13 ops, take_noise, 6 noise-tensor (`_at`) variants
    assert ok.returncode == 0 and f"{len(declared)} sparsekern_C ops with CPU kernels" in ok.stdout, ok.stderr
    if not torch.cuda.is_available() and torch.version.cuda is None:
        missing = _run_check("--library", compiled_module.__file__, "--keys", "CPU,CUDA")
        assert missing.returncode == 1 and "sparsekern_C::uniform (CUDA)" in missing.stderr


def test_library_check_survives_a_library_that_aborts(tmp_path):
    """A C++ abort while registering kills only the child the check runs in."""
    src = tmp_path / "aborts.cpp"
    src.write_text("#include <cstdlib>\nstatic int boom = (std::abort(), 0);\n")
    lib = tmp_path / "libaborts.so"
    subprocess.run(["c++", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, timeout=120)
    proc = _run_check("--library", str(lib))
    assert proc.returncode != 0


def test_import_falls_back_when_the_compiled_library_is_broken():
    code = textwrap.dedent("""
        import sys, warnings
        class Broken:
            def find_spec(self, name, path=None, target=None):
                if name == "sparsekern._C":
                    raise ImportError("undefined symbol: simulated")
        sys.meta_path.insert(0, Broken())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import sparsekern, torch
        assert any("falling back" in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert "cpu" not in sparsekern.available_backends()
        w = torch.randn(4, 5)
        print(sparsekern.soft_threshold(w, torch.tensor([-1.0])).shape)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "torch.Size([4, 5])" in proc.stdout, proc.stderr[-3000:]


# ---------------------------------------------------------------- make on a PEP 668 system Python (issue 22)
def _make_dry_run(tmp_path, managed: bool, *extra) -> str:
    """`make -n demo` with a stand-in python3 that reports (not) being externally managed."""
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\necho {int(managed)}\n")
    fake.chmod(0o755)
    # not PY, nor the variables of an enclosing make (`make test PY=...` passes PY down in MAKEFLAGS)
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-n", "-C", ROOT, "demo", f"SYSTEM_PY={fake}", *extra], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(not any(os.access(os.path.join(d, "make"), os.X_OK)
                            for d in os.environ.get("PATH", "").split(os.pathsep)), reason="needs make")
def test_make_uses_a_venv_on_an_externally_managed_python(tmp_path):
    managed = _make_dry_run(tmp_path, True)
    assert f"{tmp_path}/python3 -m venv .venv" in managed
    assert ".venv/bin/python -m pip install" in managed and ".venv/bin/python -m sparsekern demo" in managed
    plain = _make_dry_run(tmp_path, False)
    assert "-m venv" not in plain and ".venv/" not in plain and f"{tmp_path}/python3 -m sparsekern demo" in plain
    chosen = _make_dry_run(tmp_path, True, "PY=/opt/py/bin/python")  # PY= always wins
    assert "-m venv" not in chosen and "/opt/py/bin/python -m sparsekern demo" in chosen
