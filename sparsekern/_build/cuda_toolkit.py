"""Finds the CUDA toolkit the way users' machines have it.

Order: $CUDA_HOME, then $CUDA_PATH, then the toolkit of the `nvcc` on PATH, then
/usr/local/cuda (where torch's cpp_extension looks last too, and where the lent GPU
machines have nvcc without it being on PATH). That
nvcc may be a symlink or a wrapper script (e.g. /usr/local/bin/nvcc running
/usr/local/cuda-13.0/bin/nvcc), so nvcc itself is asked where it lives (its
`-dryrun` output names its own bin directory); symlinks are followed as a fallback.
A toolkit counts only if it has bin/nvcc and the CUDA runtime library to link.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

DEFAULT_HOME = "/usr/local/cuda"
_RUNTIME_GLOBS = ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                  os.path.join("targets", "sbsa-linux", "lib"))


@dataclass(frozen=True)
class Toolkit:
    home: str | None  # the toolkit root, or None when none is usable
    reason: str       # where it came from, or why there is none (one line)


def _has_runtime(home: str) -> bool:
    for sub in _RUNTIME_GLOBS:
        folder = os.path.join(home, sub)
        if os.path.isdir(folder) and any(name.startswith("libcudart") for name in os.listdir(folder)):
            return True
    return False


def _usable(home: str, source: str) -> Toolkit:
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return Toolkit(None, f"{source} is {home!r}, which has no bin/nvcc")
    if not _has_runtime(home):
        return Toolkit(None, f"{source} is {home!r}, which has no CUDA runtime library (lib64/libcudart*)")
    return Toolkit(home, f"{source} ({home})")


def _home_reported_by(nvcc: str) -> str | None:
    """The toolkit root nvcc reports for itself (`_HERE_` is its bin directory)."""
    try:
        proc = subprocess.run([nvcc, "-dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", proc.stdout + proc.stderr, re.MULTILINE)
    return os.path.dirname(match.group(1).strip()) if match else None


def find_toolkit(environ: dict[str, str] | None = None, default_home: str = DEFAULT_HOME) -> Toolkit:
    environ = os.environ if environ is None else environ
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            return _usable(environ[var], f"${var}")
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc is None:
        if _usable(default_home, "the default").home:
            return Toolkit(default_home, f"{default_home} (no nvcc on PATH, CUDA_HOME/CUDA_PATH unset)")
        return Toolkit(None, f"no nvcc on PATH, neither CUDA_HOME nor CUDA_PATH is set, and {default_home} "
                             "has no toolkit")
    candidates = [_home_reported_by(nvcc), os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    for home in dict.fromkeys(c for c in candidates if c):
        found = _usable(home, f"the toolkit of {nvcc}")
        if found.home:
            return found
    return Toolkit(None, f"{nvcc} does not lead to a toolkit with bin/nvcc and lib64/libcudart* "
                         "(set CUDA_HOME to the toolkit root)")


def nvcc_major(home: str) -> int | None:
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.", out)
    return int(match.group(1)) if match else None


if __name__ == "__main__":  # prints the toolkit root, or why there is none (exit 1)
    import sys

    found = find_toolkit()
    print(found.home or found.reason, file=sys.stdout if found.home else sys.stderr)
    sys.exit(0 if found.home else 1)
