"""`python -m sparsekern selftest`: every available backend against the reference.

Runs each op's forward and backward on fresh random inputs through the public
ops, compares with the float64 reference, and prints one row per (backend, op).
Each backend runs on its own device: ``cpu`` on CPU tensors, ``cuda`` and ``triton``
on CUDA tensors when there is a GPU (``triton`` on CPU tensors when interpreted).
Exit code 1 if any backend disagrees.
"""
from __future__ import annotations

import time

import torch

import sparsekern
from sparsekern import backends
from sparsekern.backends import registry

SEED, OFFSET = 20240611, 2**32 - 3  # the counter crosses into the high word


def _cases(shape: tuple[int, ...], device: torch.device):
    """(name, function of tensors, tensor factories) for every differentiable op."""
    rows = shape[0]
    w = lambda: torch.randn(shape, device=device)  # noqa: E731
    yield "soft_threshold", lambda a, b: sparsekern.soft_threshold(a, b), (
        w, lambda: torch.randn(rows, device=device) - 3)
    yield "hard_concrete", lambda a: sparsekern.hard_concrete(a, SEED, OFFSET), (w,)
    yield "hard_concrete_eval", lambda a: sparsekern.hard_concrete_eval(a), (w,)
    yield "l0_norm", lambda a: sparsekern.l0_norm(a), (w,)
    yield "gated_weight", lambda a, b: sparsekern.gated_weight(a, b, SEED, OFFSET), (w, w)
    yield "gated_activation", lambda a, b: sparsekern.gated_activation(a, b, SEED, OFFSET), (
        lambda: torch.randn((8,) + shape[:1] + (5,), device=device), lambda: torch.randn(rows, device=device))


def _run(fn, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(torch.ones_like(out))  # deterministic cotangent: errors compare across backends
    return [out.detach()] + [t.grad for t in inputs]


def _rel_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    worst = 0.0
    for g, w in zip(got, want):
        g, w = g.double(), w.double()
        worst = max(worst, float((g - w).norm() / w.norm().clamp_min(1e-30)))
    return worst


def check(name: str, dtype: torch.dtype, shape=(64, 3, 7, 7), tol: float | None = None, device="cpu"):
    """Rows of (backend, op, dtype, rel. error, ms, ok) for backend `name` on tensors of `device`."""
    tol = tol if tol is not None else {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, 2e-2)
    device = torch.device(device)
    results = []
    for op, fn, makers in _cases(shape, device):
        inputs = [m().to(dtype) for m in makers]  # both sides see the same rounded inputs
        with backends.use_backend("torch"):
            want = _run(fn, [t.double() for t in inputs])
        with backends.use_backend(name):
            start = time.perf_counter()
            got = _run(fn, inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ms = (time.perf_counter() - start) * 1e3
        err = _rel_error(got, want)
        results.append((name, op, str(dtype).replace("torch.", ""), err, ms, err <= tol))
    return results


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
SHAPE = (64, 3, 7, 7)


def _dtypes(text: str) -> list[torch.dtype]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES]
    if bad or not names:
        raise ValueError(f"--dtypes: expected a comma-separated list of {', '.join(DTYPES)}, got {text!r}")
    return [DTYPES[d] for d in names]


def device_for(name: str) -> torch.device:
    """Where backend ``name`` runs: CUDA tensors for cuda, and for triton when there is a GPU and
    Triton compiles (not interpreted); CPU tensors otherwise."""
    gpu = torch.cuda.is_available()
    if name == "cuda" or (name == "triton" and gpu and not registry.triton_interpreted()):
        return torch.device("cuda")
    return torch.device("cpu")


def _why_not(name: str, device: torch.device) -> str | None:
    """None if backend ``name`` can be checked on tensors of ``device`` here, else why not."""
    if not backends.is_available(name):
        return {"cpu": "the compiled extension has no CPU kernels (not built, or failed to load)",
                "cuda": "needs a GPU and the CUDA build of the extension",
                "triton": "needs triton and a GPU, or TRITON_INTERPRET=1 to interpret it on CPU"}[name]
    return registry._supports(name, device, torch.float32)


def targets() -> tuple[list[tuple[str, torch.device]], list[str]]:
    """([(backend, device) to check], [why each other backend is not checked])."""
    chosen, skipped = [], []
    for name in ("cpu", "cuda", "triton"):
        device = device_for(name)
        reason = _why_not(name, device)
        if reason is None:
            chosen.append((name, device))
        else:
            skipped.append(f"{name} ({reason})")
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    from sparsekern.cli.common import Parser

    parser = Parser(prog="sparsekern selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help=f"comma-separated dtypes to check, of {', '.join(DTYPES)}")
    args = parser.parse_args(argv)
    dtypes = _dtypes(args.dtypes)
    cpu = torch.device("cpu")
    print(f"sparsekern {sparsekern.__version__}  torch {torch.__version__}")
    print(f"available backends: {', '.join(backends.available_backends())}  (auto on CPU -> "
          f"{backends.resolve_name(cpu)})")
    chosen, skipped = targets()
    for line in skipped:
        print(f"not checked: {line}")
    print("each backend is compared with the 'torch' reference run in float64 on the same inputs and device; "
          f"ms = one forward + backward on tensors of shape {list(SHAPE)} "
          f"(gated_activation: {[8, SHAPE[0], 5]}), first call, warm-up included")
    if not chosen:
        print("no backend besides the reference is available here: nothing to check")
        return 0
    print(f"{'backend':<8} {'device':<7} {'op':<20} {'dtype':<9} {'rel.err':>9} {'ms':>8}  result")
    failures = 0
    for name, device in chosen:
        for dtype in dtypes:
            for row in check(name, dtype, SHAPE, device=device):
                backend, op, dt, err, ms, ok = row
                failures += not ok
                print(f"{backend:<8} {device.type:<7} {op:<20} {dt:<9} {err:9.2e} {ms:8.2f}  "
                      f"{'ok' if ok else 'MISMATCH'}")
    print("all backends agree with the reference" if not failures else f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
