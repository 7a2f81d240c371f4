"""L0-HC and Dep-L0 in the library: placement, the coupled penalty, shrinking, BN recalibration."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekern
from sparsekern import nn as snn
from sparsekern.models import build_model
from sparsekern.pruning.surgery.channel_gating import GatedModule, chained_gates

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {"lenet300": (1, 8, 8), "lenet5": (1, 12, 12), "vgg16": (3, 16, 16), "resnet20": (1, 8, 8)}
# SPEC 3 placement: (gates, kernel area of each gated layer)
PLACEMENT = {"lenet300": (2, {1}), "lenet5": (3, {25, 1}), "vgg16": (13, {9}), "resnet20": (10, {9})}


def _gated(name: str, method: str, seed: int = 0):
    torch.manual_seed(seed)
    c, h, w = SHAPES[name]
    model = build_model(name, 10, c, (h, w))
    sparsekern.sparsify(model, method, **({"dependency": "backward"} if method == "dep_l0" else {}))
    return model, torch.randn(5, c, h, w)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_placement_of_the_built_in_models(name):
    model, x = _gated(name, "l0_hc")
    gates = chained_gates(model)
    count, kernels = PLACEMENT[name]
    assert len(gates) == count and {g.chain.kernel_area for g in gates} == kernels
    assert gates[0].chain.in_channels == SHAPES[name][0] or name == "lenet300"
    assert all(abs(g.log_alpha.mean().item() - 3.0) < 0.05 for g in gates)  # SPEC 3: N(3, 0.01)
    dep, _ = _gated(name, "dep_l0")
    assert [g.num_channels for g in chained_gates(dep)] == dep.gate_generator.widths
    assert all(g.log_alpha is None for g in chained_gates(dep))
    model(x).sum().backward()  # trains


def _independent_penalty(gates, lam, first_in, kernels, positions=None, clamp=False):
    """SPEC 3 written out with loops over channels, independent of coupled_penalty, in float64
    (a float32 loop over 512 channels alone drifts by ~1e-5 relative)."""
    total, prev = 0.0, float(first_in)
    for l, gate in enumerate(gates):
        la = gate.gate_log_alpha().double()
        e = 0.0
        for c in range(la.numel()):
            p = torch.sigmoid(la[c] - (2 / 3) * torch.log(torch.tensor(0.1 / 1.1, dtype=torch.float64)))
            e = e + (p.clamp(1e-6, 1 - 1e-6) if clamp else p)
        total = total + lam * kernels[l] * prev * e * (1.0 if positions is None else positions[l])
        prev = e
    return total


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
def test_coupled_penalty_matches_the_formula(method):
    model, x = _gated("vgg16", method, seed=1)
    gates = chained_gates(model)
    if method == "l0_hc":
        with torch.no_grad():  # spread the gates, some near 0/1 so the clamp matters
            for g in gates:
                g.log_alpha.copy_(torch.randn_like(g.log_alpha) * 8)
    lam = 1e-6
    kernels = [9] * 13
    got = sparsekern.regularization(model, num_samples=1, lam=lam, clamp=True)
    def close(got, want):  # float32 sums of 512 terms against float64: a few float32 ulps
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)

    close(got, _independent_penalty(gates, lam, 3, kernels, clamp=True))
    got = sparsekern.regularization(model, lam=lam, num_samples=7)
    close(got, _independent_penalty(gates, lam, 3, kernels) / 7)
    got = sparsekern.regularization(model, num_samples=1, lam=lam, cost="flops", example_input=x[:1])
    positions = [16 * 16] * 2 + [8 * 8] * 2 + [4 * 4] * 3 + [2 * 2] * 3 + [1] * 3
    close(got, _independent_penalty(gates, lam, 3, kernels, positions))
    # the gradient of one term reaches both of its layers' gates
    model.zero_grad()
    sparsekern.regularization(model, num_samples=1, lam=lam).backward()
    if method == "l0_hc":
        assert all(g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0 for g in gates)
    else:
        assert all(layer.weight.grad.abs().sum() > 0 for layer in model.gate_generator.layers)


def test_generator_runs_once_per_training_step():
    model, x = _gated("vgg16", "dep_l0")
    calls = []
    model.gate_generator.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    loss = model(x).sum() + sparsekern.regularization(model, num_samples=1, lam=1e-6)
    loss.backward()
    assert len(calls) == 1


def test_param_groups_put_the_generator_with_the_gates():
    model, _ = _gated("resnet20", "dep_l0")
    groups = {g["name"]: g for g in sparsekern.param_groups(model, 0.1, 5e-4)}
    generator = set(map(id, model.gate_generator.parameters()))
    assert generator == set(map(id, groups["gates"]["params"])) and groups["gates"]["weight_decay"] == 0.0
    assert not generator & set(map(id, groups["weights"]["params"] + groups["no_decay"]["params"]))


def _randomize(model, method):
    """Spread the gates (some closed) and BatchNorm statistics, as after training."""
    with torch.no_grad():
        if method == "l0_hc":
            for g in chained_gates(model):
                g.log_alpha.copy_(torch.randn_like(g.log_alpha) * 3)
        else:
            for layer in model.gate_generator.layers:
                layer.bias.normal_(0, 2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shrink_equals_the_gated_eval_model(name, method):
    model, x = _gated(name, method, seed=2)
    _randomize(model, method)
    model.eval()
    shrunk = sparsekern.finalize(model)  # built-in gated models go through shrink_model
    widths = sparsekern.model_widths(shrunk)
    full = [g.num_channels for g in chained_gates(model)]
    assert widths != full and all(1 <= w <= f for w, f in zip(widths, full))
    assert not any(isinstance(m, (snn.ChannelGate, snn.GateGenerator)) for m in shrunk.modules())
    assert type(shrunk) is type(model) and not shrunk.training
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), model(x), atol=1e-5, rtol=1e-5)
        rebuilt = build_model(name, 10, SHAPES[name][0], SHAPES[name][1:], widths=widths)
        rebuilt.load_state_dict(shrunk.state_dict())  # strict: the plain class, narrower
        rebuilt.eval()
        torch.testing.assert_close(rebuilt(x), model(x), atol=1e-5, rtol=1e-5)
    report = sparsekern.sparsity_report(model, x[:1])["total"]
    counted = sparsekern.sparsity_report(rebuilt, x[:1])["total"]
    assert counted["dense_flops"] == pytest.approx(report["effective_flops"])
    kept_weights = sum(r["params"] * r["effective_flops"] / r["dense_flops"]
                       for r in sparsekern.sparsity_report(model, x[:1])["layers"])
    assert counted["params"] == pytest.approx(kept_weights)


class _UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        return self.head(self.b(x).mean((2, 3)))


class _Untraceable(_UserNet):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return super().forward(x)


def test_user_models_fx_names_and_errors():
    model = _UserNet()
    sparsekern.sparsify(model, "dep_l0")
    assert isinstance(model.bn_a, GatedModule) and len(chained_gates(model)) == 1
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    named = _Untraceable()
    sparsekern.sparsify(named, "l0_hc", layers=["b"])
    assert isinstance(named.b, GatedModule) and chained_gates(named)[0].num_channels == 4
    with pytest.raises(ValueError, match="torch.fx cannot trace.*layers="):
        sparsekern.sparsify(_Untraceable(), "l0_hc")
    with pytest.raises(ValueError, match="no Conv2d -> BatchNorm2d.*layers="):
        sparsekern.sparsify(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "l0_hc")
    with pytest.raises(ValueError, match="no module 'nope'"):
        sparsekern.sparsify(_UserNet(), "l0_hc", layers=["nope"])
    with pytest.raises(ValueError, match="nn.Sequential"):
        sparsekern.sparsify(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), "dep_l0")
    with pytest.raises(ValueError, match="dependency"):
        sparsekern.sparsify(_UserNet(), "l0_hc", dependency="forward")


def test_recalibrate_bn_uses_eval_gates():
    model, x = _gated("resnet20", "l0_hc", seed=3)
    _randomize(model, "l0_hc")
    data = torch.randn(64, 1, 8, 8)
    model.train()
    sparsekern.recalibrate_bn(model, data, batches=2, batch_size=32)
    assert model.training and model.layers[0].gate1.training  # modes restored
    # independent check: the stem BN's statistics are those of conv1's output over all 64 inputs
    with torch.no_grad():
        y = model.conv1(data)
    torch.testing.assert_close(model.bn1.running_mean, y.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.bn1.running_var, y.var((0, 2, 3), unbiased=True), atol=1e-4, rtol=1e-3)
    # deeper BNs see the deterministic gates: close to a pass through the eval network (which
    # normalizes with the pooled statistics rather than each batch's; sampled gates differ far more)
    sparsekern.recalibrate_bn(model, data, batches=1, batch_size=64)
    block = model.layers[0]
    with torch.no_grad():
        model.eval()
        stream = model.gate(torch.relu(model.bn1(model.conv1(data))))
        h = block.gate1(torch.relu(block.bn1(block.conv1(stream))))
        z = block.conv2(h)
    torch.testing.assert_close(block.bn2.running_mean, z.mean((0, 2, 3)), atol=2e-2, rtol=2e-2)
    assert block.bn2.momentum == 0.1
    with pytest.raises(ValueError, match="batches"):
        sparsekern.recalibrate_bn(model, data, batches=0)
