"""The layers' noise stream on CUDA: no host sync per gated forward, and CUDA graphs that
capture a training step draw new gates at every replay (issue 18, defects 3 and 4).

The GPU tests run the real thing (sync debug mode "error", a captured graph); the CPU
tests check the code paths those rely on, and fail if the code goes back to item
assignment or to host ints under capture.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sparsekern
from sparsekern import nn as snn
from sparsekern.nn import base as nn_base

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# aten ops that write a Python scalar through an index (a CPU scalar tensor copied to the
# device: a host sync on CUDA), or read the state back to the host.
SYNCING = {"index_put_", "index_put", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "copy_", "item"}


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _layer(device="cpu"):
    torch.manual_seed(0)
    return snn.L0Linear(5, 3, granularity="weight").train().to(device)


def test_take_noise_advances_the_state_without_item_assignment():
    layer = _layer()
    layer.take_noise(15)  # the first call reads the buffer once; later ones use the host copy
    with _RecordOps() as rec:
        layer.take_noise(15)
    assert rec.names, "take_noise issued no aten op: the state did not advance"
    assert not SYNCING & set(rec.names), f"take_noise issues syncing ops on CUDA: {rec.names}"
    assert set(rec.names) <= {"slice", "narrow", "select", "fill_"}, rec.names
    assert layer.noise_offset == 30


@pytest.fixture
def fake_capture(monkeypatch):
    """torch.cuda reporting a graph capture under way (on a CPU-only torch as well)."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def test_capture_takes_the_noise_as_a_tensor(fake_capture, monkeypatch):
    layer = _layer()
    seed = layer.noise_seed
    seen = []
    real = sparsekern.ops.gated_weight

    def spy(weight, la, *noise, **kw):
        seen.append(noise)
        return real(weight, la, *noise, **kw)

    monkeypatch.setattr(sparsekern.ops, "gated_weight", spy)
    x = torch.randn(2, 5)
    for step in range(2):
        out = layer(x)
        (noise,) = seen[-1]
        assert isinstance(noise, torch.Tensor) and noise.dtype == torch.int64, type(noise)
        assert noise.tolist() == [seed, 15 * step]  # a copy taken before the advance
        assert layer.noise_offset == 15 * (step + 1)
        want = torch.nn.functional.linear(
            x, real(layer.weight, layer.log_alpha, seed, 15 * step), layer.bias)
        torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_no_capture_keeps_the_int_path(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    layer = _layer()
    assert layer.take_noise(4) == (layer.noise_seed, 0)
    assert not nn_base._graph_capturing()


@needs_gpu
def test_eager_gated_forward_does_not_sync():
    layer = _layer("cuda")
    x = torch.randn(8, 5, device="cuda")
    layer(x)  # the first forward reads the buffer once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            layer(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_gpu
@pytest.mark.parametrize("mode,granularity", [("weight", "weight"), ("activation", "out")])
def test_captured_step_draws_new_gates_at_every_replay(mode, granularity):
    torch.manual_seed(0)
    layer = snn.L0Linear(64, 32, mode=mode, granularity=granularity).train().cuda()
    x = torch.randn(16, 64, device="cuda")
    twin = _twin(layer)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph wants
        layer(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(x)
    twin(x)  # the warm-up step (the capture itself runs nothing)
    outs = []
    for _ in range(2):
        graph.replay()
        outs.append(out.clone())
        torch.testing.assert_close(outs[-1], twin(x), rtol=0, atol=0)
    assert not torch.equal(outs[0], outs[1]), "two replays drew the same gates"
    assert torch.equal(layer(x), twin(x)), "an eager step after the replays reuses stale noise"


def _twin(layer):
    import copy

    return copy.deepcopy(layer)
