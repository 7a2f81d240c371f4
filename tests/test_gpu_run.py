"""bench/gpu_run.sh on a machine without a GPU (issue 18, defects 1 and 2): every stage runs and
reports on its own, and the library check runs as a module from the repository root."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skips of a machine without a GPU")
def test_stages_report_independently(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_run.sh", "preflight", "bogus", "test", "ops"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the unknown stage failed
    lines = (tmp_path / "gpu-run-summary.txt").read_text().split("\n")
    status = {line.split()[0]: line.split()[1] for line in lines if line.strip()}
    assert status == {"preflight": "ok", "bogus": "FAILED", "test": "skipped", "ops": "skipped"}
    assert "SKIP test: no GPU" in done.stdout and "pytest" in done.stdout  # preflight lists the packages


def test_library_check_runs_as_a_module_from_the_repository_root():
    """As gpu_run.sh's build stage runs it (as a script it put sparsekern/_build on sys.path)."""
    from sparsekern.backends import extension

    if extension.LOAD_ERROR is not None or not extension.compiled_available():
        pytest.skip("the compiled extension is not built here")
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-m", "sparsekern._build.library_check", "--import-sparsekern",
                           "--keys", "CPU,Meta"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "library check OK" in done.stdout, done.stderr[-2000:]
    script = open(os.path.join(ROOT, "bench", "gpu_run.sh")).read()
    assert "-m sparsekern._build.library_check" in script and "sparsekern/_build/library_check.py" not in script
