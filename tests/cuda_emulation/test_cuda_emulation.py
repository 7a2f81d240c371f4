"""The CUDA kernels and their torch binding (csrc/cuda), run on the host by the emulation,
against the CPU kernels (torch.ops.sparsekern_C) and the reference.

Elementwise outputs share csrc/include/sparsekern's math with the CPU kernels and must match
them bit for bit. Group sums (l0_norm, grad_s, per-row/per-channel grad_log_alpha) add in
another order (per tile, shuffles then shared memory) and get test_cuda.py's tolerance against
the CPU kernels (rtol 1e-4, atol 1e-5 x magnitude) plus the flash rule against the float64
reference; they must repeat bit for bit whatever the grid, alignment or layout.
"""
from __future__ import annotations

import pytest
import torch

from helpers import (
    CASES,
    HC,
    LOW_PRECISION,
    Case,
    assert_flash_close,
    check_exact_masks,
    converted,
    dtype_id,
    generator,
    kernel_outputs,
    magnitude,
    make_inputs,
    terms_per_output,
)
from sparsekern import backends, reference
from test_op_checks import BAD_CALLS, assert_one_line_error
from test_op_checks import IDS as BAD_IDS

# Beyond test_ops' shapes: rows spanning 2 and 8 warps, several column and row tiles, tails,
# flat tensors of more tiles than the emulated grid has blocks (grid-stride loops, multi-tile sums).
EXTRA = [
    Case("soft_threshold", (3, 300), "row"),
    Case("soft_threshold", (2, 5000), "row"),
    Case("soft_threshold", (700, 3), "row"),
    Case("soft_threshold", (40000,), "tensor"),
    Case("hard_concrete", (40001,)),
    Case("hard_concrete_eval", (16387,)),
    Case("l0_norm", (40000,)),
    Case("l0_norm", (4099,)),
    Case("gated_weight", (5, 2049), "row"),
    Case("gated_weight", (33, 1000), "full"),
    Case("gated_activation", (3, 4, 40, 40)),
    Case("gated_activation", (64, 300)),
]
ALL = list(CASES) + EXTRA
DTYPES = pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
REDUCED = {("l0_norm", 0), ("soft_threshold", 2), ("gated_activation", 2), ("gated_weight-row", 2)}
_U64 = 1 << 64


class EmuKernels:
    """sparsekern.reference's kernel signatures on torch.ops.sparsekern_emu (seeds as int64 bits)."""

    def __getattr__(self, name):
        op = getattr(torch.ops.sparsekern_emu, name)

        def call(*args):
            args = [a - _U64 if isinstance(a, int) and a >= 1 << 63 else a for a in args]
            out = op(*args)
            return tuple(out) if isinstance(out, (list, tuple)) else out

        return call

    def uniform(self, numel, seed, offset, device):
        out = torch.empty(numel, dtype=torch.float32, device=device)
        self.__getattr__("uniform")(out, seed, offset)
        return out


EMU = EmuKernels()


@pytest.fixture(autouse=True)
def _device0(emu_ops):
    emu_ops.emu_set_device(0)  # 2 SMs x 5 blocks: grid-stride loops go round
    yield
    emu_ops.emu_set_device(0)


def _key(case: Case) -> str:
    return case.op + ("-row" if case.op == "gated_weight" and case.mode == "row" else "")


def _assert_matches_cpu(case, emu, cpu, where):
    for i, (a, b) in enumerate(zip(emu, cpu)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where} output {i}: {a.dtype}{tuple(a.shape)} vs cpu"
        if (_key(case), i) in REDUCED:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * magnitude(b), msg=f"{where} output {i}")
        else:
            assert torch.equal(a, b), f"{where} output {i}: emulated CUDA and CPU kernels differ"


def _assert_matches_reference(case, inp, dtype, actual, where):
    lowp = kernel_outputs(reference, case, inp)
    exact = kernel_outputs(reference, case, converted(inp, torch.float64))
    scales = kernel_outputs(reference, case, converted(inp, torch.float64, absolute=True))
    for i, (a, lo, ex, sc) in enumerate(zip(actual, lowp, exact, scales)):
        assert_flash_close(a, lo, ex, dtype=dtype, scale=magnitude(sc), terms=terms_per_output(case, inp, ex),
                           what=f"{where} output {i}")


def _assert_identical(xs, ys, where):
    for i, (a, b) in enumerate(zip(xs, ys)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where} output {i} differs"


@DTYPES
@pytest.mark.parametrize("case", ALL, ids=str)
def test_kernels_match_cpu_and_reference(dtype, case):
    inp = make_inputs(case, dtype, generator("emu", case, dtype))
    emu = kernel_outputs(EMU, case, inp)
    _assert_matches_cpu(case, emu, kernel_outputs(backends.module("cpu"), case, inp), f"{case} {dtype}")
    _assert_matches_reference(case, inp, dtype, emu, f"{case} {dtype}")
    check_exact_masks(case, inp, emu)


def _offset_view(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy whose data pointer is one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    return buf[1:].view(t.shape).copy_(t)


LAYOUT_CASES = [c for c in ALL if c.shape in ((7, 13), (1023,), (64, 33), (2, 3, 5, 7), (2, 5000), (40001,),
                                              (5, 2049), (33, 1000), (3, 4, 40, 40))]


@DTYPES
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_misaligned_pointers_take_the_scalar_path_with_the_same_bits(dtype, case):
    inp = make_inputs(case, dtype, generator("emu-align", case, dtype))
    shifted = {k: _offset_view(v) if isinstance(v, torch.Tensor) else v for k, v in inp.items()}
    assert all(v.data_ptr() % 16 != 0 for v in shifted.values() if isinstance(v, torch.Tensor) and v.numel())
    _assert_identical(kernel_outputs(EMU, case, shifted), kernel_outputs(EMU, case, inp), f"{case} misaligned")


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", [c for c in LAYOUT_CASES if len(c.shape) >= 2], ids=str)
def test_strided_inputs(dtype, case, layout):
    inp = make_inputs(case, dtype, generator("emu-layout", case, dtype, layout), layout)
    emu = kernel_outputs(EMU, case, inp)
    _assert_matches_cpu(case, emu, kernel_outputs(backends.module("cpu"), case, inp), f"{case} {layout}")
    _assert_identical(emu, kernel_outputs(EMU, case, converted(inp, contiguous=True)), f"{case} {layout}")


GRID_CASES = [c for c in ALL if c.shape in ((2, 5000), (700, 3), (40000,), (40001,), (5, 2049), (64, 300),
                                            (3, 4, 40, 40))]


@pytest.mark.parametrize("case", GRID_CASES, ids=str)
def test_results_do_not_depend_on_the_grid(emu_ops, case):
    """Fake devices of 10, 1 and 660 resident blocks: the same bits, sums included (fixed tiles)."""
    inp = make_inputs(case, torch.bfloat16, generator("emu-grid", case))
    runs = []
    for device in (0, 1, 2):
        emu_ops.emu_set_device(device)
        runs.append(kernel_outputs(EMU, case, inp))
    _assert_identical(runs[1], runs[0], f"{case} one block")
    _assert_identical(runs[2], runs[0], f"{case} 132 SMs")


@pytest.mark.parametrize("device, blocks", [(0, 2 * 5), (1, 1), (2, 132 * 5)])
def test_grid_is_sized_by_occupancy_and_cached(emu_ops, device, blocks):
    """grid = min(work, SMs x resident blocks per SM); the SM count and the occupancy are asked
    once per (device, kernel), not at every launch (defect 9)."""
    emu_ops.emu_set_device(device)
    la = torch.randn(2048 * 700)  # 700 tiles
    torch.ops.sparsekern_emu.hard_concrete_eval(la, HC["gamma"], HC["zeta"])
    launches, attrs, occupancy, grid = emu_ops.emu_stats()
    assert grid == min(700, blocks)
    for n in (2048 * 700, 2048 * 3 + 1, 5):
        torch.ops.sparsekern_emu.hard_concrete_eval(torch.randn(n), HC["gamma"], HC["zeta"])
        now = emu_ops.emu_stats()
        assert now[1:3] == [attrs, occupancy], "a warm launch queried the device again"
        assert now[3] == min((n + 2047) // 2048, blocks)
    assert now[0] == launches + 3


@pytest.mark.parametrize("seed, offset", [(0, 0), (-(2**62), 2**32 - 2), (2**63 - 1, -5)])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
def test_noise_state_ops_read_seed_and_offset_from_the_tensor(dtype, seed, offset):
    """`_at` ops (the kernels read [seed, offset] from memory): the int-seeded kernels' bits, and the CPU `_at` ops'."""
    gen = generator("emu-at", dtype, seed)
    hc = (HC["beta"], HC["gamma"], HC["zeta"])
    noise = torch.tensor([seed, offset], dtype=torch.int64)
    w, la_full, la_rows = (torch.randn(*s, generator=gen).to(dtype) for s in ((64, 96), (64, 96), (64,)))
    x = torch.randn(8, 64, 5, generator=gen).to(dtype)
    emu, cpu = torch.ops.sparsekern_emu, torch.ops.sparsekern_C
    for name, data in (("hard_concrete", (la_full,)), ("gated_weight", (w, la_full)), ("gated_weight", (w, la_rows)),
                       ("gated_activation", (x, la_rows))):
        got = getattr(emu, name + "_at")(*data, noise, *hc)
        assert torch.equal(got, getattr(emu, name)(*data, seed, offset, *hc)), name
        assert torch.equal(got, getattr(cpu, name + "_at")(*data, noise, *hc)), name
        grad = torch.randn(got.shape, generator=gen).to(dtype)
        got_b = getattr(emu, name + "_at_backward")(grad, *data, noise, *hc)
        want_b = getattr(emu, name + "_backward")(grad, *data, seed, offset, *hc)
        cpu_b = getattr(cpu, name + "_at_backward")(grad, *data, noise, *hc)
        got_b, want_b, cpu_b = ((o,) if isinstance(o, torch.Tensor) else tuple(o) for o in (got_b, want_b, cpu_b))
        _assert_identical(got_b, want_b, f"{name}_at_backward")
        assert torch.equal(got_b[0], cpu_b[0]), name
        if len(got_b) > 1:
            torch.testing.assert_close(got_b[1], cpu_b[1], rtol=1e-4, atol=1e-5 * magnitude(cpu_b[1]))


@pytest.mark.parametrize("n", [1, 7, 8, 2047, 2048, 40001])
@pytest.mark.parametrize("seed, offset", [(0, 0), (2**64 - 1, 2**64 - 3000), (2**32 + 7, 2**32 - 5)])
def test_uniform_bit_identical(n, seed, offset):
    assert torch.equal(EMU.uniform(n, seed, offset, "cpu"), reference.uniform(n, seed, offset, torch.device("cpu")))
    view = _offset_view(torch.zeros(n))  # misaligned output: the scalar path
    torch.ops.sparsekern_emu.uniform(view, *(v - _U64 if v >= 1 << 63 else v for v in (seed, offset)))
    assert torch.equal(view, reference.uniform(n, seed, offset, torch.device("cpu")))


MIXED = [(x, p) for x in LOW_PRECISION for p in LOW_PRECISION if x != p]


@pytest.mark.parametrize("x_dtype, p_dtype", MIXED, ids=lambda d: dtype_id(d))
@pytest.mark.parametrize("case", [Case("soft_threshold", (9, 70), "row"), Case("gated_weight", (9, 70), "row"),
                                  Case("gated_weight", (9, 70), "full"), Case("gated_activation", (3, 9, 70))],
                         ids=str)
def test_mixed_dtypes(case, x_dtype, p_dtype):
    """Every (data, parameter) dtype pair the launchers instantiate, against the CPU kernels."""
    inp = make_inputs(case, x_dtype, generator("emu-mixed", case, x_dtype, p_dtype))
    inp["param"] = inp["param"].to(p_dtype)
    emu = kernel_outputs(EMU, case, inp)
    _assert_matches_cpu(case, emu, kernel_outputs(backends.module("cpu"), case, inp), f"{case} {x_dtype}/{p_dtype}")


@pytest.mark.parametrize("la_dtype, grad_dtype", MIXED, ids=lambda d: dtype_id(d))
def test_l0_backward_grad_dtypes(la_dtype, grad_dtype):
    la = torch.randn(3000, generator=generator("emu-l0", la_dtype)).to(la_dtype)
    grad = torch.tensor(0.37).to(grad_dtype)
    hc = (HC["beta"], HC["gamma"], HC["zeta"])
    assert torch.equal(torch.ops.sparsekern_emu.l0_norm_backward(grad, la, *hc),
                       torch.ops.sparsekern_C.l0_norm_backward(grad, la, *hc))


def test_empty_tensors(emu_ops):
    hc = (HC["beta"], HC["gamma"], HC["zeta"])
    before = emu_ops.emu_stats()[0]
    assert EMU.hard_concrete(torch.empty(0), 1, 2, *hc).shape == (0,)
    assert float(EMU.l0_norm(torch.empty(0), *hc)) == 0.0
    out, grad_la = EMU.gated_weight_backward(torch.empty(4, 0), torch.empty(4, 0), torch.zeros(4), 1, 2, *hc)
    assert out.shape == (4, 0) and torch.equal(grad_la, torch.zeros(4))
    assert emu_ops.emu_stats()[0] == before, "an empty tensor launched a kernel"


@pytest.mark.parametrize("op, args, message", BAD_CALLS, ids=BAD_IDS)
def test_cuda_binding_checks_like_the_cpu_binding(emu_ops, op, args, message):
    """Defect 5: the CUDA binding rejects wrong parameter counts and grad shapes, with the CPU's messages."""
    assert_one_line_error(emu_ops, op, args, message)
