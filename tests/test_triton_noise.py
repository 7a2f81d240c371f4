"""Triton kernels that read the noise counter themselves (``sparsekern_triton::<op>_at``), and the
launch configuration rule that replaced autotuning (issue 18, defects 7 and 10).

Interpreted on CPU tensors without a GPU (TRITON_INTERPRET=1, tests/conftest.py).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sparsekern
from helpers import HC, generator
from sparsekern import backends

pytest.importorskip("triton")
if not backends.is_available("triton"):
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1 (set before triton is imported)", allow_module_level=True)

from sparsekern.backends.triton import backend as tb  # noqa: E402
from sparsekern.backends.triton import kernels as tk  # noqa: E402

DEVICE = "cpu" if backends.triton_interpreted() else "cuda"
SEED_OFFSETS = [(0, 0), (2**63 + 5, 2**64 - 3), (2**32 + 7, 2**32 - 2), (12345, 99)]
HCV = tuple(HC.values())


def _i64(v: int) -> int:
    return v - 2**64 if v >= 2**63 else v


def _noise(seed, offset):
    return torch.tensor([_i64(seed), _i64(offset)], dtype=torch.int64, device=DEVICE)


def _data(key):
    gen = generator("triton-noise", *key)

    def r(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE)

    return {  # (op, data tensors): per weight, per row, per example; one case past a column tile
        "hard_concrete": [(r(7, 13),)],
        "gated_weight": [(r(6, 5), r(6, 5)), (r(6, 5), r(6)), (r(3, 1100), r(3))],
        "gated_activation": [(r(3, 6, 2), r(6)), (r(4, 5), r(5))],
    }


@pytest.mark.parametrize("seed,offset", SEED_OFFSETS)
def test_at_kernels_equal_the_int_seeded_kernels(seed, offset):
    noise = _noise(seed, offset)
    for name, cases in _data((seed, offset)).items():
        for data in cases:
            want = getattr(tb, name)(*data, seed, offset, *HCV)
            got = getattr(tb, name + "_at")(*data, noise, *HCV)
            assert torch.equal(got, want), name
            grad = torch.randn_like(want)
            want_b = getattr(tb, name + "_backward")(grad, *data, seed, offset, *HCV)
            got_b = getattr(tb, name + "_at_backward")(grad, *data, noise, *HCV)
            for a, b in zip(*((o,) if isinstance(o, torch.Tensor) else o for o in (got_b, want_b))):
                assert torch.equal(a, b), f"{name} backward"


_HOST_READS = ("tolist", "item", "__int__", "__index__", "__bool__", "__float__")


@pytest.fixture
def no_host_reads_of(monkeypatch):
    """no_host_reads_of(noise) -> a context in which reading that tensor's storage into Python
    (.tolist(), .item(), int(t), ...: a host sync on CUDA) fails. Tensor methods are patched (a
    CPU tensor's .tolist() never reaches the dispatcher, and custom ops run their bodies without
    the caller's torch-function modes); a dispatch mode catches _local_scalar_dense as well."""
    import contextlib

    @contextlib.contextmanager
    def guard(noise):
        ptr = noise.untyped_storage().data_ptr()
        for name in _HOST_READS:
            real = getattr(torch.Tensor, name)

            def spy(self, *args, _real=real, _name=name, **kwargs):
                assert self.untyped_storage().data_ptr() != ptr, f"a host read of the noise tensor: {_name}"
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)
        try:
            with _NoScalarDense():
                yield
        finally:
            monkeypatch.undo()

    return guard


class _NoScalarDense(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        assert func.overloadpacket.__name__ != "_local_scalar_dense", "a host read of a tensor value"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("seed,offset", SEED_OFFSETS[1:2])
def test_public_ops_on_triton_never_read_the_noise_on_the_host(seed, offset, no_host_reads_of):
    """A noise tensor through the public ops on the triton backend: same values and gradients as
    the int API, and no .tolist()/.item() of the counter (one host sync per gate op on CUDA)."""
    noise = _noise(seed, offset)
    for name, cases in _data((seed, offset, "public")).items():
        for data in cases:
            data = tuple(t.requires_grad_() for t in data)
            op = getattr(sparsekern, name)
            with sparsekern.use_backend("triton"):
                want = op(*data, seed, offset, **HC)
                want_g = torch.autograd.grad((want * want).sum(), data)
                with no_host_reads_of(noise):
                    got = op(*data, noise, **HC)
                    got_g = torch.autograd.grad((got * got).sum(), data)
            assert torch.equal(got, want), name
            for a, b in zip(got_g, want_g):
                assert torch.equal(a, b), name


@pytest.mark.parametrize("read", [lambda t: t.tolist(), lambda t: t[0].item(), lambda t: int(t[1])])
def test_the_host_read_guard_catches_reads(read, no_host_reads_of):
    noise = _noise(5, 7)
    with pytest.raises(AssertionError, match="host read"), no_host_reads_of(noise):
        read(noise)


@pytest.mark.parametrize("name", ["hard_concrete_at", "gated_weight_at", "gated_activation_at"])
def test_at_opcheck(name):
    la, w, x = (torch.randn(*s).to(DEVICE) for s in ((6, 5), (6, 5), (2, 6, 3)))
    data = {"hard_concrete_at": (la,), "gated_weight_at": (w, la), "gated_activation_at": (x, la[:, 0])}[name]
    noise = _noise(2**63 + 5, 7)
    torch.library.opcheck(getattr(torch.ops.sparsekern_triton, name), (*data, noise, *HCV))
    torch.library.opcheck(getattr(torch.ops.sparsekern_triton, name + "_backward"),
                          (torch.randn_like(data[0]), *data, noise, *HCV))


def test_size_bucket_is_the_next_power_of_two():
    assert [tk.size_bucket(n) for n in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025)] == [1, 1, 2, 4, 4, 8, 1024, 1024, 2048]
    assert tk.size_bucket(2**31 + 1) == 2**32


def test_flat_config_depends_only_on_the_bucket():
    """No autotuning (benchmarks with syncs at every new size, fatal inside a CUDA graph capture):
    a fixed rule whose answer changes only at bucket boundaries."""
    for n in (1, 7, 1000, 4096, 2**20 - 1, 2**20, 2**20 + 1, 2**26 - 3):
        assert tk.flat_config(n) == tk.flat_config(tk.size_bucket(n)), n
    assert tk.flat_config(2**20) == (1024, 4) and tk.flat_config(2**20 + 1) == (4096, 8)
    for kernel in (tk.uniform_kernel, tk.hard_concrete_kernel, tk.gated_weight_kernel, tk.l0_backward_kernel):
        assert not hasattr(kernel, "configs"), f"{kernel} is autotuned"
