"""Shared test utilities: which backends to run, input makers, the tolerance rule.

Tolerance rule (flash-attention style): an output of a backend run in dtype D
may be no further from the float64 reference than 2x the distance of the
reference itself run in D, plus a tiny absolute term scaled by the magnitude
of the quantity (and by sqrt(n) for sums over n terms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import sparsekern
from sparsekern import backends
from sparsekern.backends import reference

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)
HC = dict(beta=2.0 / 3.0, gamma=-0.1, zeta=1.1)  # docs/math.md's constants
SEEDS = (0, 1234, 2**32 + 7, 2**63 + 5, 2**64 - 1)

# 8 ulps of the precision the math runs in (float32 for every low-precision input).
_TINY = {torch.float64: 8 * torch.finfo(torch.float64).eps}
_TINY_DEFAULT = 8 * torch.finfo(torch.float32).eps


def cpu_backends(light: bool = False) -> list[str]:
    """Backends that run on CPU tensors here.

    Interpreted Triton (TRITON_INTERPRET=1) is slow and has its own suite, so it
    is only part of the light parametrizations.
    """
    names = [n for n in sparsekern.available_backends() if n not in ("cuda", "triton")]
    if light and "triton" in sparsekern.available_backends() and backends.triton_interpreted():
        names.append("triton")
    return names


def compiled_cpu_backends() -> list[str]:
    """Backends that accept float64 (gradcheck): torch and the compiled cpu one."""
    return [n for n in cpu_backends() if n in ("torch", "cpu")]


def supports_dtype(backend: str, dtype: torch.dtype) -> bool:
    return dtype != torch.float64 or backend in ("torch", "cpu")


def skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if not supports_dtype(backend, dtype):
        pytest.skip(f"backend {backend!r} does not take {dtype}")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def generator(*key) -> torch.Generator:
    """A CPU generator seeded from the test's parameters: fresh inputs per case, reproducible."""
    g = torch.Generator()
    g.manual_seed(_stable_hash(key))
    return g


def _stable_hash(key) -> int:
    h = 0
    for ch in repr(key):
        h = (h * 131 + ord(ch)) % (2**61 - 1)
    return h


def randn(shape, dtype, gen, scale: float = 1.0) -> torch.Tensor:
    """Normal values rounded to `dtype` (so the float64 copy holds exactly the same numbers)."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def random_seed(gen) -> tuple[int, int]:
    """A (seed, offset) pair spanning the 64-bit range."""
    seed = SEEDS[int(torch.randint(len(SEEDS), (1,), generator=gen))]
    offset = int(torch.randint(2**62, (1,), generator=gen)) * 3
    return seed, offset


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    return float((actual.double() - expected.double()).abs().max())


def assert_flash_close(actual, lowp, exact, *, dtype, scale: float = 1.0, terms: int = 1, what: str = "") -> None:
    """actual vs the float64 `exact`, allowed 2x the error of the reference `lowp` run in `dtype`."""
    assert actual.shape == exact.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(actual.double()).all() == torch.isfinite(exact).all(), f"{what}: non-finite values differ"
    err = max_err(actual, exact)
    ref_err = max_err(lowp, exact)
    atol = _TINY.get(dtype, _TINY_DEFAULT) * max(scale, 1e-30) * math.sqrt(max(terms, 1))
    assert err <= 2 * ref_err + atol, (
        f"{what}: max error {err:.3g} vs float64 reference exceeds 2 x {ref_err:.3g} (reference in {dtype}) "
        f"+ {atol:.3g}"
    )
    if dtype in (torch.float16, torch.bfloat16) and terms == 1 and actual.numel():
        # Elementwise results: float32 math rounded once to `dtype` is off by at most what the reference
        # is off at that element (x2, if the two round in opposite directions); math done in `dtype`
        # itself is caught here even where the max-error rule above is dominated by large values.
        ex = exact.double()
        err_i = (actual.double() - ex).abs()
        ref_i = (lowp.double() - ex).abs()
        bound = 2 * ref_i + 64 * torch.finfo(torch.float32).eps * ex.abs() + atol
        worst = int(torch.argmax(err_i - bound))
        assert bool((err_i <= bound).all()), (
            f"{what}: element {worst} off by {float(err_i.flatten()[worst]):.3g}, reference in {dtype} by "
            f"{float(ref_i.flatten()[worst]):.3g} (exact {float(ex.flatten()[worst]):.6g})"
        )


def magnitude(t: torch.Tensor) -> float:
    return float(t.double().abs().max()) if t.numel() else 1.0


def expanded_gates(log_alpha: torch.Tensor, batch: int) -> torch.Tensor:
    """log_alpha [C] repeated per example: [B, C] (gated_activation's RNG layout b*C + c)."""
    return log_alpha.reshape(1, -1).expand(batch, -1).contiguous()


def hc_sbar64(log_alpha: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """The stretched sample s_bar (before the clamp) in float64, for telling clear 0/1 gates from borderline ones."""
    u = reference.uniform(log_alpha.numel(), seed, offset, log_alpha.device).double().reshape(log_alpha.shape)
    u = u.clamp(reference.EPS, 1 - reference.EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha.double()) / HC["beta"])
    return s * (HC["zeta"] - HC["gamma"]) + HC["gamma"]


def assert_clear_gates_exact(z: torch.Tensor, sbar64: torch.Tensor, margin: float = 1e-4, what: str = "") -> None:
    """Gates clearly below 0 / above 1 before the clamp must be exactly 0 / 1 (the clamp is exact)."""
    zero, one = sbar64 < -margin, sbar64 > 1 + margin
    assert (z[zero] == 0).all(), f"{what}: gates that must be exactly 0 are not"
    assert (z[one] == 1).all(), f"{what}: gates that must be exactly 1 are not"


# ---------------------------------------------------------------- op cases
# A case is (op, shape, mode): `mode` says how the parameter is laid out
# (`tensor`/`scalar`: one s or gate for the whole tensor, `row`: one per row,
# `full`: one gate per weight). Inputs are built in a dtype and a memory layout
# (`contig`, `sliced`, `transposed`: the last two are non-contiguous views).
@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple
    mode: str = ""

    def __str__(self) -> str:
        return f"{self.op}-{'x'.join(map(str, self.shape))}{'-' + self.mode if self.mode else ''}"


WEIGHT_SHAPES = ((1,), (7, 13), (1023,), (16, 3, 3, 3), (64, 33))
GATE_SHAPES = ((1,), (7, 13), (1023,), (16, 3, 3, 3))
ACTIVATION_SHAPES = ((1, 1), (5, 7), (8, 33), (2, 3, 5, 7), (4, 16, 3, 3))

CASES = (
    [Case("soft_threshold", s, m) for s in WEIGHT_SHAPES for m in ("tensor", "row")]
    + [Case("soft_threshold", (7, 13), "scalar")]
    + [Case(op, s) for op in ("hard_concrete", "hard_concrete_eval", "l0_norm") for s in GATE_SHAPES]
    + [Case("gated_weight", s, m) for s in WEIGHT_SHAPES for m in ("full", "row")]
    + [Case("gated_activation", s) for s in ACTIVATION_SHAPES]
)

# Name of the "main" tensor (the one the op maps elementwise) and of the parameter per op.
MAIN = {"soft_threshold": "weight", "gated_weight": "weight", "gated_activation": "x"}
HAS_SEED = {"hard_concrete", "gated_weight", "gated_activation"}


def _tensor(shape, dtype, gen, layout, scale=1.0, shift=0.0):
    """Random values in `shape`, as a contiguous tensor or a non-contiguous view."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        base = randn((shape[1], shape[0]) + shape[2:], dtype, gen, scale)
        t = base.transpose(0, 1)
    elif layout in ("sliced", "transposed") and len(shape) >= 1:
        base = randn(shape[:-1] + (2 * shape[-1],), dtype, gen, scale)
        t = base[..., ::2]
    else:
        t = randn(shape, dtype, gen, scale)
    return t + shift if shift else t


def _param_shape(case: Case) -> tuple:
    if case.mode == "scalar":
        return ()
    if case.mode == "tensor":
        return (1,)
    if case.mode == "row":
        return (case.shape[0],)
    if case.op == "gated_activation":
        return (case.shape[1],)
    return case.shape


def make_inputs(case: Case, dtype, gen, layout: str = "contig") -> dict:
    """Tensors (main, param, grad) in `dtype` plus the op's scalar arguments."""
    inp = {}
    if case.op in MAIN:
        inp["main"] = _tensor(case.shape, dtype, gen, layout)
    if case.op == "soft_threshold":
        inp["param"] = _tensor(_param_shape(case), dtype, gen, layout, scale=0.5, shift=-1.0)  # t ~ 0.27
    else:
        inp["param"] = _tensor(_param_shape(case), dtype, gen, layout, scale=1.5)  # gates: 0, 1 and between
    out_shape = () if case.op == "l0_norm" else case.shape
    inp["grad"] = _tensor(out_shape, dtype, gen, layout)
    if case.op in HAS_SEED:
        inp["seed"], inp["offset"] = random_seed(gen)
    return inp


def converted(inp: dict, dtype=None, absolute: bool = False, contiguous: bool = False) -> dict:
    """A copy with tensors cast to `dtype`; `absolute` takes |main| and |grad| (for error scales)."""
    out = {}
    for k, v in inp.items():
        if isinstance(v, torch.Tensor):
            v = v.to(dtype) if dtype is not None else v
            v = v.abs() if absolute and k in ("main", "grad") else v
            v = v.contiguous() if contiguous else v
        out[k] = v
    return out


def _hc_args(inp):
    return (inp["seed"], inp["offset"], HC["beta"], HC["gamma"], HC["zeta"])


def kernel_outputs(mod, case: Case, inp: dict) -> list[torch.Tensor]:
    """Forward and backward kernels of backend module `mod` on contiguous inputs."""
    m, p, g = inp.get("main"), inp["param"], inp["grad"]
    if case.op == "soft_threshold":
        return [mod.soft_threshold(m, p), *mod.soft_threshold_backward(g, m, p)]
    if case.op == "hard_concrete":
        return [mod.hard_concrete(p, *_hc_args(inp)), mod.hard_concrete_backward(g, p, *_hc_args(inp))]
    if case.op == "hard_concrete_eval":
        gz = (HC["gamma"], HC["zeta"])
        return [mod.hard_concrete_eval(p, *gz), mod.hard_concrete_eval_backward(g, p, *gz)]
    if case.op == "l0_norm":
        bgz = (HC["beta"], HC["gamma"], HC["zeta"])
        return [mod.l0_norm(p, *bgz), mod.l0_norm_backward(g, p, *bgz)]
    fwd, bwd = getattr(mod, case.op), getattr(mod, case.op + "_backward")
    return [fwd(m, p, *_hc_args(inp)), *bwd(g, m, p, *_hc_args(inp))]


def public_forward(case: Case, main, param, inp: dict) -> torch.Tensor:
    if case.op == "soft_threshold":
        return sparsekern.soft_threshold(main, param)
    if case.op == "hard_concrete":
        return sparsekern.hard_concrete(param, inp["seed"], inp["offset"], **HC)
    if case.op == "hard_concrete_eval":
        return sparsekern.hard_concrete_eval(param, gamma=HC["gamma"], zeta=HC["zeta"])
    if case.op == "l0_norm":
        return sparsekern.l0_norm(param, **HC)
    return getattr(sparsekern, case.op)(main, param, inp["seed"], inp["offset"], **HC)


def public_outputs(case: Case, inp: dict) -> list[torch.Tensor]:
    """Output of the public op and the gradients of its tensor inputs, through autograd."""
    leaves = [inp[k].detach().requires_grad_() for k in ("main", "param") if k in inp]
    main, param = (leaves if len(leaves) == 2 else (None, leaves[0]))
    out = public_forward(case, main, param, inp)
    grads = torch.autograd.grad(out, leaves, inp["grad"])
    return [out.detach(), *grads]


def gate_sbar64(case: Case, inp: dict) -> torch.Tensor | None:
    """s_bar (pre-clamp gate) in float64, broadcast to the main tensor's layout; None if no gate."""
    p = inp["param"].double()
    if case.op == "hard_concrete_eval":
        return torch.sigmoid(p) * (HC["zeta"] - HC["gamma"]) + HC["gamma"]
    if case.op == "hard_concrete":
        return hc_sbar64(p.contiguous(), inp["seed"], inp["offset"])
    if case.op == "gated_weight":
        sbar = hc_sbar64(p.contiguous().reshape(-1), inp["seed"], inp["offset"])
        w = inp["main"]
        return sbar.reshape(w.shape) if case.mode == "full" else sbar.reshape((-1,) + (1,) * (w.dim() - 1))
    if case.op == "gated_activation":
        x = inp["main"]
        sbar = hc_sbar64(p.reshape(1, -1).expand(x.shape[0], -1).contiguous(), inp["seed"], inp["offset"])
        return sbar.reshape(sbar.shape + (1,) * (x.dim() - 2))
    return None


def check_exact_masks(case: Case, inp: dict, outs: list[torch.Tensor], margin: float = 1e-4) -> None:
    """Where the math is exact (away from the mask / clamp boundary) results must match bit for bit.

    outs = [forward output, grad of main (or of log_alpha for the gate-only ops), ...].
    """
    out, g = outs[0], inp["grad"]
    if case.op == "soft_threshold":
        w, s = inp["main"].double(), inp["param"].double()
        t = torch.sigmoid(s.reshape((-1,) + (1,) * (w.dim() - 1)) if s.numel() > 1 else s.reshape(()))
        off, on = w.abs() < t - margin, w.abs() > t + margin
        assert (out[off] == 0).all() and (outs[1][off] == 0).all(), "soft_threshold: masked entries not exactly 0"
        assert torch.equal(outs[1][on], g[on].to(outs[1].dtype)), "soft_threshold: grad_w != grad where kept"
        return
    sbar = gate_sbar64(case, inp)
    if sbar is None:
        return
    zero = (sbar < -margin).expand(out.shape)
    one = (sbar > 1 + margin).expand(out.shape)
    if case.op in ("hard_concrete", "hard_concrete_eval"):
        assert (out[zero] == 0).all() and (out[one] == 1).all(), f"{case.op}: clamped gates not exactly 0/1"
        assert (outs[1][zero | one] == 0).all(), f"{case.op}: gradient of a clamped gate is not exactly 0"
        return
    m = inp["main"]
    assert (out[zero] == 0).all() and (outs[1][zero] == 0).all(), f"{case.op}: closed gates do not give exact 0"
    assert torch.equal(out[one], m[one]), f"{case.op}: open gates do not pass the input through exactly"
    assert torch.equal(outs[1][one], g[one].to(outs[1].dtype)), f"{case.op}: open gates do not pass the grad exactly"


def terms_per_output(case: Case, inp: dict, out: torch.Tensor) -> int:
    """How many products each element of `out` sums (1 for elementwise results)."""
    n = (inp.get("main") if "main" in inp else inp["param"]).numel()
    return max(1, n // max(out.numel(), 1))


def cli_error(argv, capsys) -> str:
    """Runs the CLI on bad arguments: exit 2 and exactly one line on stderr, no traceback."""
    from sparsekern.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
