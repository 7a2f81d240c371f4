"""The random-number contract (docs/math.md section 4), checked against an independent numpy Philox4x32-10."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsekern
from helpers import HC, assert_clear_gates_exact, cpu_backends, expanded_gates, generator, hc_sbar64

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
LO32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Random123's Philox4x32-10 on a [n, 4] uint32 counter array with a 2-word key; returns [n, 4] uint32."""
    c = [ctr[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0, p1 = M0 * c[0], M1 * c[2]  # 64-bit products of 32-bit words: exact in uint64
            hi0, lo0 = p0 >> np.uint64(32), p0 & LO32
            hi1, lo1 = p1 >> np.uint64(32), p1 & LO32
            c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
            k0, k1 = k0 + W0, k1 + W1  # uint32 wrap-around
    return np.stack([x.astype(np.uint32) for x in c], axis=1)


def numpy_uniform(numel: int, seed: int, offset: int) -> np.ndarray:
    """docs/math.md §4 written with numpy: counter = offset + i (mod 2**64), u from int32(r0)."""
    with np.errstate(over="ignore"):
        counter = np.uint64(offset) + np.arange(numel, dtype=np.uint64)
    ctr = np.zeros((numel, 4), dtype=np.uint32)
    ctr[:, 0] = (counter & LO32).astype(np.uint32)
    ctr[:, 1] = (counter >> np.uint64(32)).astype(np.uint32)
    r0 = philox4x32_10(ctr, (seed & 0xFFFFFFFF, seed >> 32))[:, 0]
    x = r0.view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


# Random123's published known-answer vectors for philox4x32_10 (kat_vectors): counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_numpy_philox_known_answers(counter, key, expected):
    """The test's own Philox is right before anything is compared with it."""
    out = philox4x32_10(np.array([counter], dtype=np.uint32), key)
    assert tuple(int(v) for v in out[0]) == expected


SEED_OFFSETS = [
    (0, 0),
    (1234, 5),
    (2**32 - 1, 2**32 - 2),  # the counter carries into its high word inside the call
    (2**63 + 5, 2**40 + 3),
    (2**64 - 1, 2**63),
    (7, 2**64 - 3),  # the counter wraps around 2**64
]


@pytest.mark.parametrize("backend", cpu_backends(light=True))
@pytest.mark.parametrize("seed, offset", SEED_OFFSETS)
def test_uniform_bit_exact(backend, seed, offset):
    with sparsekern.use_backend(backend):
        u = sparsekern.uniform(37, seed, offset)
    assert u.dtype == torch.float32 and u.shape == (37,)
    assert np.array_equal(u.numpy().view(np.uint32), numpy_uniform(37, seed, offset).view(np.uint32))


def test_uniform_range_and_offsets():
    u = sparsekern.uniform(10_000, 99, 0)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    # Counter arithmetic: the stream at offset k is the stream at 0 shifted by k.
    assert torch.equal(sparsekern.uniform(10, 99, 5), u[5:15])
    # Carry into the high word and wrap-around at 2**64 are plain 64-bit addition.
    high = sparsekern.uniform(6, 99, 2**32 - 2)
    assert torch.equal(high[2:], sparsekern.uniform(4, 99, 2**32))
    wrap = sparsekern.uniform(5, 99, 2**64 - 2)
    assert torch.equal(wrap[2:], u[:3])
    # Different offsets (no overlap) and different seeds give different numbers.
    assert (sparsekern.uniform(1000, 99, 10_000) != u[:1000]).float().mean() > 0.99
    assert (sparsekern.uniform(1000, 100, 0) != u[:1000]).float().mean() > 0.99
    assert (sparsekern.uniform(1000, 99 + 2**32, 0) != u[:1000]).float().mean() > 0.99


def _hc(la, seed, offset):
    return sparsekern.hard_concrete(la, seed, offset, **HC)


@pytest.mark.parametrize("seed, offset", SEED_OFFSETS[1:4])
def test_same_noise_on_every_backend(seed, offset):
    """Same (seed, offset): identical uniforms, and the same gates up to float rounding, on every backend."""
    la = torch.randn(300, generator=generator("rng-backends")) * 2
    names = cpu_backends(light=True)
    us, zs = {}, {}
    for name in names:
        with sparsekern.use_backend(name):
            us[name] = sparsekern.uniform(300, seed, offset)
            zs[name] = _hc(la, seed, offset)
    for name in names:
        assert torch.equal(us[name], us["torch"]), name
        torch.testing.assert_close(zs[name], zs["torch"], rtol=2e-6, atol=2e-6, msg=name)
        assert_clear_gates_exact(zs[name], hc_sbar64(la, seed, offset), what=name)


@pytest.mark.parametrize("backend", cpu_backends(light=True))
def test_gate_rng_indices(backend):
    """gated_weight: gate i uses counter offset+i (per weight) or offset+row (per row);
    gated_activation: gate (b, c) uses offset + b*C + c."""
    gen = generator("rng-index", backend)
    seed, offset = 2**63 + 5, 2**32 - 7
    w = torch.randn(6, 4, 3, generator=gen)
    la_rows = torch.randn(6, generator=gen)
    la_full = torch.randn(6, 4, 3, generator=gen)
    x = torch.randn(5, 6, 2, 3, generator=gen)
    with sparsekern.use_backend(backend):
        rows = _hc(la_rows, seed, offset)
        full = _hc(la_full, seed, offset)
        per_example = _hc(expanded_gates(la_rows, 5), seed, offset)
        cases = [
            (sparsekern.gated_weight(w, la_rows, seed, offset, **HC), w * rows[:, None, None]),
            (sparsekern.gated_weight(w, la_full, seed, offset, **HC), w * full),
            (sparsekern.gated_activation(x, la_rows, seed, offset, **HC), x * per_example[:, :, None, None]),
        ]
    for got, expected in cases:
        torch.testing.assert_close(got, expected, rtol=4e-7, atol=1e-7)
    # The gates of example b > 0 differ from example 0's: the index is not c alone.
    assert not torch.equal(per_example[1], per_example[0])
