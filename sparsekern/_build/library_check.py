"""Checks a compiled sparsekern_C library in the process that runs this file.

    python sparsekern/_build/library_check.py --library PATH --keys CPU,CUDA
    python sparsekern/_build/library_check.py --import-sparsekern --keys CPU,CUDA,Meta

A C++ abort while a library registers its ops (a registration conflict, a missing
symbol) kills the process, so setup.py and `make cuda-check` run this in a child
process: a broken build fails there, loudly, instead of in a user's `import sparsekern`.
Checks that every sparsekern_C op has a kernel for each key and that the CPU kernel
of soft_threshold computes the right thing. Exit 0 and one line on success.
"""
from __future__ import annotations

import argparse
import sys

NAMESPACE = "sparsekern_C"


def op_names(torch) -> list[str]:
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(NAMESPACE + "::"))


def missing_kernels(torch, keys: list[str]) -> list[str]:
    return [f"{op} ({key})" for op in op_names(torch) for key in keys
            if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]


def cpu_smoke_error(torch) -> str | None:
    w = torch.linspace(-2, 2, 41).reshape(1, 41)
    s = torch.tensor([-0.5])
    got = torch.ops.sparsekern_C.soft_threshold(w, s)
    want = torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s))
    return None if torch.allclose(got, want, atol=1e-6) else "soft_threshold on CPU gives wrong values"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--library", help="shared library to load with torch.ops.load_library")
    source.add_argument("--import-sparsekern", action="store_true", help="import sparsekern (its _C and fakes)")
    parser.add_argument("--keys", default="CPU", help="comma-separated dispatch keys every op must have")
    args = parser.parse_args(argv)
    keys = [k for k in args.keys.split(",") if k]

    import torch

    if args.library:
        torch.ops.load_library(args.library)
        what = args.library
    else:
        import sparsekern
        from sparsekern.backends import extension as _extension

        if _extension.LOAD_ERROR is not None:
            print(f"library check FAILED: sparsekern._C did not load: {_extension.LOAD_ERROR}", file=sys.stderr)
            return 1
        what = f"sparsekern {sparsekern.__file__}, backends {sparsekern.available_backends()}"
    ops = op_names(torch)
    problems = [] if ops else [f"no {NAMESPACE} ops registered"]
    missing = missing_kernels(torch, keys)
    if missing:
        problems.append("missing kernels: " + ", ".join(missing))
    if "CPU" in keys and ops:
        problems.append(cpu_smoke_error(torch))
    problems = [p for p in problems if p]
    if problems:
        print(f"library check FAILED for {what}: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"library check OK: {len(ops)} {NAMESPACE} ops with {'/'.join(keys)} kernels ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
