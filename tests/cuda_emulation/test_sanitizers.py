"""The emulated kernels under the sanitizers, through the torch-free driver (driver.cpp):
ASan+UBSan over every launcher, shape, dtype pair and alignment; TSan over a reduced set."""
from __future__ import annotations

import os
import subprocess

import pytest

import emu_build as build

# Any finding fails the run: UBSan is built with -fno-sanitize-recover, TSan halts at its first report.
ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1",
       "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1"}


def run_driver(path: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV})


@pytest.mark.parametrize("kind, args", [("asan", ()), ("tsan", ("reduced",))])
def test_driver_is_clean(kind, args):
    proc = run_driver(build.driver(kind), *args)
    assert proc.returncode == 0, f"{kind} driver failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    assert " 0 mismatches" in proc.stdout and "Sanitizer" not in proc.stderr, proc.stdout + proc.stderr[-3000:]
