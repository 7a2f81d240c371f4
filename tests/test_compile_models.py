"""Whole sparsified models under torch.compile(fullgraph=True): one compile, then training steps
that reuse it (the gate noise counter is a tensor, not a guarded Python int), with eager's losses.

The sweep uses the `aot_eager` compiler (the same capture, functionalization and autograd
tracing as inductor, without C++ code generation: fast on 2 cores); one case runs inductor.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from sparsekern import nn as snn
from sparsekern.pruning import GMP, sparsify

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
CASES = {
    "str": ("str", {}),
    "str-per-channel": ("str", {"per_channel": True}),
    "gmp": ("gmp", {}),
    "l0-weight": ("l0", {"granularity": "weight"}),
    "l0-out": ("l0", {"granularity": "out"}),
    "l0-in": ("l0", {"granularity": "in"}),
    "l0-out-activation": ("l0", {"granularity": "out", "mode": "activation"}),
    "l0-in-activation": ("l0", {"granularity": "in", "mode": "activation"}),
    "channel-gate": ("channel-gate", {}),
    "channel-gate-generated": ("channel-gate", {"generated": True}),
}


class _Generated(nn.Module):
    """log_alpha produced by a module each call, as a Dep-L0 gate generator feeds ChannelGate."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 4)

    def forward(self):
        return self.linear(torch.ones(2))


class _WithGenerator(nn.Module):
    def __init__(self, body: nn.Module, generator: nn.Module):
        super().__init__()
        self.body, self.generator = body, generator  # registered: the generator's parameters train

    def forward(self, x):
        return self.body(x)


def _model(method: str, opts: dict) -> nn.Module:
    torch.manual_seed(0)
    source = _Generated() if opts.get("generated") else None
    gate = [snn.ChannelGate(4, log_alpha_source=source)] if method == "channel-gate" else []
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), *gate, nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3))
    if source is not None:
        return _WithGenerator(model, source)
    return model if method == "channel-gate" else sparsify(model, method, **opts)


def _train(model: nn.Module, forward, method: str, steps: int = STEPS) -> list[torch.Tensor]:
    """Losses of ``steps`` SGD steps (GMP prunes on its schedule, as the trainer does)."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gmp = GMP(model, 0.5, steps, frequency=1) if method == "gmp" else None
    losses = []
    for _ in range(steps):
        x, y = torch.randn(5, 2, 4, 4, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if gmp is not None:
            gmp.step()
        losses.append(loss.detach())
    return losses


def _train_eager_and_compiled(eager: nn.Module, method: str):
    """Trains ``eager`` and a copy under torch.compile(fullgraph) side by side; the copy must
    compile exactly once. Returns (eager losses, compiled losses, copy, compiled copy, counter)."""
    compiled_model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    expected = _train(eager, eager, method)
    got = _train(compiled_model, compiled, method)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles for {STEPS} training steps"
    return expected, got, compiled_model, compiled, counter


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_compile_once_and_match_eager(case):
    method, opts = CASES[case]
    torch._dynamo.reset()
    eager = _model(method, opts).train()
    expected, got, compiled_model, compiled, counter = _train_eager_and_compiled(eager, method)
    assert torch.equal(torch.stack(got), torch.stack(expected))
    for (name, a), b in zip(eager.state_dict().items(), compiled_model.state_dict().values()):
        assert torch.equal(a, b), name  # weights, gates, and noise counters advanced alike

    eager.eval(), compiled_model.eval()
    x = torch.randn(5, 2, 4, 4)
    for _ in range(2):  # eval: one more graph (the training flag is guarded), deterministic gates
        assert torch.equal(compiled(x), eager(x))
    assert counter.frame_count == 2


def test_inductor_l0_training_matches_eager():
    """The real inductor on the per-weight L0 model: fused graph around the custom ops, one compile."""
    torch._dynamo.reset()
    eager = _model("l0", {}).train()
    compiled_model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    expected = _train(eager, eager, "l0")
    got = _train(compiled_model, compiled, "l0")
    assert counter.frame_count == 1
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert torch.equal(compiled_model.get_submodule("0").noise_state, eager.get_submodule("0").noise_state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_reduce_overhead_cuda_graphs_l0_training():
    """mode='reduce-overhead' (CUDA graphs): replays advance the noise counter on the device."""
    torch._dynamo.reset()
    eager = _model("l0", {}).cuda().train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, mode="reduce-overhead")
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(5, 2, 4, 4, generator=gen).cuda()
        torch.compiler.cudagraph_mark_step_begin()
        got, expected = compiled(x), eager(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        got.sum().backward()
        expected.sum().backward()
    a, b = compiled_model.get_submodule("0"), eager.get_submodule("0")
    torch.testing.assert_close(a.log_alpha.grad, b.log_alpha.grad, rtol=1e-4, atol=1e-5)
    assert torch.equal(a.noise_state, b.noise_state)


class _ConvNet(nn.Module):
    """A user model with two conv->BN pairs: l0_hc / dep_l0 find them with torch.fx."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
def test_structured_gates_compile_once(method):
    """Independent channel gates and the real Dep-L0 gate generator train under one compile."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = sparsify(_ConvNet(), method).train()
    expected, got, compiled_model, _, _ = _train_eager_and_compiled(eager, method)
    # The compiled graph runs the generator once per gate, so its gradients sum in another order.
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.state_dict().items(), compiled_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
