"""The compiled CPU kernels' vector bodies and tails (issue 8).

Philox runs in blocks of 256 counters, 16 (AVX-512) or 8 (AVX2) lanes at a time;
per-element activation gates take a fused row/channel path; reductions buffer their
terms. Sizes here straddle every lane, block and row boundary, and the results are
checked bit for bit where the math allows: against numpy's Philox, against another
compiled path that computes the same numbers, and across thread counts.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from helpers import HC, FLOAT_DTYPES, assert_clear_gates_exact, dtype_id, expanded_gates, generator, hc_sbar64
from sparsekern import backends
from sparsekern.backends import extension as _extension
from sparsekern.backends import reference
from test_rng import numpy_uniform

pytestmark = pytest.mark.skipif(not _extension.compiled_available(), reason="compiled CPU kernels not built")

SIZES = (1, 7, 8, 9, 15, 16, 17, 255, 256, 257, 1023, 4099)
# offsets whose counters carry into the high word or wrap past 2**64 inside a vector
SEED_OFFSETS = ((1234, 5), (2**63 + 5, 2**32 - 5), (7, 2**64 - 3), (2**64 - 1, 2**32 + 250))


def _cpu():
    return backends.module("cpu")


def _hc_args(seed, offset):
    return seed, offset, HC["beta"], HC["gamma"], HC["zeta"]


@pytest.mark.parametrize("seed, offset", SEED_OFFSETS)
@pytest.mark.parametrize("n", SIZES)
def test_uniform_every_lane_and_tail(n, seed, offset):
    u = _cpu().uniform(n, seed, offset, torch.device("cpu"))
    assert np.array_equal(u.numpy().view(np.uint32), numpy_uniform(n, seed, offset).view(np.uint32))


@pytest.mark.parametrize("shift", (1, 5, 17, 255))
def test_uniform_does_not_depend_on_block_alignment(shift):
    u = _cpu().uniform(1000, 99, 2**32 - 300, torch.device("cpu"))
    assert torch.equal(u[shift:], _cpu().uniform(1000 - shift, 99, 2**32 - 300 + shift, torch.device("cpu")))


@pytest.mark.parametrize("seed, offset", SEED_OFFSETS[:3])
@pytest.mark.parametrize("n", SIZES)
def test_hard_concrete_and_full_gated_weight_use_counter_offset_plus_i(n, seed, offset):
    """Clear gates are exactly 0/1 at the right positions, and both ops draw the same gates."""
    la = torch.randn(n, generator=generator("blocks-hc", n)) * 3
    z = _cpu().hard_concrete(la, *_hc_args(seed, offset))
    assert_clear_gates_exact(z, hc_sbar64(la, seed, offset), what=f"hard_concrete n={n}")
    torch.testing.assert_close(z, reference.hard_concrete(la, *_hc_args(seed, offset)), rtol=2e-6, atol=2e-6)
    assert torch.equal(_cpu().gated_weight(torch.ones(n), la, *_hc_args(seed, offset)), z)


# [B, C] activations: one gate per element, RNG index b * C + c; C not a multiple of any vector width.
ACTIVATIONS = ((1, 1), (3, 1), (1, 17), (3, 7), (5, 33), (2, 300), (40, 257), (512, 37))


@pytest.mark.parametrize("shape", ACTIVATIONS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_per_element_activation_gates_equal_gated_weight(shape, dtype):
    """gated_activation on [B, C] equals gated_weight with log_alpha repeated per example, bit for bit;
    its grad_log_alpha is that op's per-gate gradient summed over b in order."""
    batch, channels = shape
    gen = generator("blocks-act", shape, dtype)
    x = torch.randn(shape, generator=gen).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    la = (torch.randn(channels, generator=gen) * 2).to(dtype)
    args = _hc_args(2**63 + 5, 2**32 - 9)
    la_full = expanded_gates(la, batch)
    out = _cpu().gated_activation(x, la, *args)
    assert torch.equal(out, _cpu().gated_weight(x, la_full, *args))
    grad_x, grad_la = _cpu().gated_activation_backward(grad, x, la, *args)
    grad_w, grad_la_full = _cpu().gated_weight_backward(grad, x, la_full, *args)
    assert torch.equal(grad_x, grad_w)
    total = torch.zeros(channels, dtype=grad_la_full.dtype)
    for b in range(batch):  # the kernel's order: b = 0, 1, ...
        total += grad_la_full[b]
    assert torch.equal(grad_la, total)


def test_per_element_activation_gates_are_the_counters_b_times_c_plus_c():
    la = torch.randn(300, generator=generator("blocks-act-rng")) * 3
    z = _cpu().gated_activation(torch.ones(6, 300), la, *_hc_args(99, 2**64 - 700))
    assert_clear_gates_exact(z, hc_sbar64(expanded_gates(la, 6), 99, 2**64 - 700), what="gated_activation [6, 300]")


def _all_outputs():
    """Every kernel whose loops split work across threads, on shapes with long rows and odd tails."""
    gen = generator("blocks-threads")
    args = _hc_args(1234, 2**32 - 100)
    x = torch.randn(512, 300, generator=gen)
    g = torch.randn(512, 300, generator=gen)
    la_c = torch.randn(300, generator=gen)
    conv = torch.randn(8, 16, 33, 33, generator=gen)
    g_conv = torch.randn(8, 16, 33, 33, generator=gen)
    la_16 = torch.randn(16, generator=gen)
    w = torch.randn(3, 40001, generator=gen)
    g_w = torch.randn(3, 40001, generator=gen)
    la_w = torch.randn(3, 40001, generator=gen)
    la_rows = torch.randn(3, generator=gen)
    s_rows = torch.randn(3, generator=gen) * 0.5 - 1
    cpu = _cpu()
    return [
        cpu.gated_activation(x, la_c, *args), *cpu.gated_activation_backward(g, x, la_c, *args),
        cpu.gated_activation(conv, la_16, *args), *cpu.gated_activation_backward(g_conv, conv, la_16, *args),
        cpu.gated_weight(w, la_w, *args), *cpu.gated_weight_backward(g_w, w, la_w, *args),
        cpu.gated_weight(w, la_rows, *args), *cpu.gated_weight_backward(g_w, w, la_rows, *args),
        cpu.hard_concrete(la_w, *args), cpu.hard_concrete_backward(g_w, la_w, *args),
        cpu.soft_threshold(w, s_rows), *cpu.soft_threshold_backward(g_w, w, s_rows),
        cpu.uniform(100003, 5, 2**64 - 50000, torch.device("cpu")),
    ]


def test_results_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _all_outputs()
        for count in (2, 3):
            torch.set_num_threads(count)
            for i, (a, b) in enumerate(zip(one, _all_outputs())):
                assert torch.equal(a, b), f"output {i} differs with {count} threads"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not (sys.platform == "linux" and torch.backends.openmp.is_available()),
                    reason="torch's intra-op threads are not OpenMP here")
def test_kernels_are_built_with_openmp():
    """at::parallel_for is a header template: built without -fopenmp it runs the whole range on
    the calling thread (the test above then compares one thread with one thread). With OpenMP
    the library calls libgomp's GOMP_parallel, which names itself in the dynamic symbol table."""
    import sparsekern._C

    with open(sparsekern._C.__file__, "rb") as f:
        assert b"GOMP_parallel" in f.read(), "sparsekern._C was built without -fopenmp: its CPU kernels use one thread"


def test_large_outputs_equal_the_same_ops_in_pieces():
    """Outputs of 32 MiB and more get the huge-page hint before the kernel writes them
    (cpu_common.h, advise_huge_pages): the same numbers as pieces below that size."""
    n, piece = 9 * 2**20 + 5, 2**20  # 36 MiB of float32, pieces of 4 MiB
    gen = generator("huge-pages")
    la = torch.randn(n, generator=gen)
    w = torch.randn(n, generator=gen)
    s = torch.tensor([-1.5])
    cpu = _cpu()
    seed, offset = 77, 2**32 - 1000
    u = cpu.uniform(n, seed, offset, torch.device("cpu"))
    z = cpu.hard_concrete(la, *_hc_args(seed, offset))
    gw = cpu.gated_weight(w, la, *_hc_args(seed, offset))
    st = cpu.soft_threshold(w, s)
    dz = cpu.hard_concrete_backward(w, la, *_hc_args(seed, offset))
    for start in range(0, n, piece):
        stop = min(n, start + piece)
        assert torch.equal(u[start:stop], cpu.uniform(stop - start, seed, offset + start, torch.device("cpu")))
        assert torch.equal(z[start:stop], cpu.hard_concrete(la[start:stop], *_hc_args(seed, offset + start)))
        assert torch.equal(gw[start:stop], cpu.gated_weight(w[start:stop], la[start:stop], *_hc_args(seed, offset + start)))
        assert torch.equal(st[start:stop], cpu.soft_threshold(w[start:stop], s))
        assert torch.equal(dz[start:stop], cpu.hard_concrete_backward(w[start:stop], la[start:stop],
                                                                      *_hc_args(seed, offset + start)))


@pytest.mark.parametrize("row", (1, 15, 16, 17, 255, 256, 257, 16383, 16385, 40001))
def test_soft_threshold_grad_s_long_rows(row):
    """The buffered lane sums (16 lanes, 256-term buffer, 16384-element chunks) against float64."""
    gen = generator("blocks-st", row)
    w = torch.randn(3, row, generator=gen)
    g = torch.randn(3, row, generator=gen)
    s = torch.randn(3, generator=gen) * 0.5 - 1
    grad_w, grad_s = _cpu().soft_threshold_backward(g, w, s)
    ref_w, ref_s = reference.soft_threshold_backward(g.double(), w.double(), s.double())
    assert torch.equal(grad_w, ref_w.float())
    torch.testing.assert_close(grad_s, ref_s.float(), rtol=1e-5, atol=1e-6 * row**0.5)
