"""The final calibration lands gated models on a target, whatever the state training left them in."""
import pytest
import torch
from torch import nn

import sparsekern
from sparsekern import nn as snn
from sparsekern.pruning.control.calibration import calibrate_gates
from sparsekern.pruning.control.lambda_control import TargetLambda


class Gated(nn.Module):
    """Channel gates of the given widths; independent, or fed by a generator ("forward"/"backward")."""

    def __init__(self, widths, dependency=None):
        super().__init__()
        if dependency is not None:
            self.gate_generator = snn.GateGenerator(widths, dependency)
        sources = [None] * len(widths) if dependency is None else [self.gate_generator.source(i)
                                                                   for i in range(len(widths))]
        self.gates = nn.ModuleList(snn.ChannelGate(w, log_alpha_source=s) for w, s in zip(widths, sources))

    def closed_fraction(self) -> float:
        kept = sum(int(g.kept().sum()) for g in self.gates)
        return 1.0 - kept / sum(g.num_channels for g in self.gates)


def _log_alphas(model):
    with torch.no_grad():
        return [g.gate_log_alpha().clone() for g in model.gates]


@pytest.mark.parametrize("dependency", [None, "forward", "backward"])
@pytest.mark.parametrize("target", [0.1, 0.5, 0.75, 0.95])
@pytest.mark.parametrize("start", ["random", "saturated open", "saturated closed"])
def test_lands_on_the_target_to_one_gate(dependency, target, start):
    torch.manual_seed(0)
    widths = [16, 24, 8, 32]
    model = Gated(widths, dependency)
    with torch.no_grad():
        if dependency is None:
            for g in model.gates:
                g.log_alpha.copy_({"random": torch.randn(g.num_channels) * 3,
                                   "saturated open": torch.full((g.num_channels,), 4.6),
                                   "saturated closed": torch.full((g.num_channels,), -4.6)}[start])
        else:  # a saturated generator: every output at about +-log 100 (ties a common shift cannot split)
            for layer in model.gate_generator.layers:
                layer.weight.mul_(3.0 if start == "random" else 0.0)
                layer.bias.fill_({"random": 0.0, "saturated open": 20.0, "saturated closed": -20.0}[start])
    before = _log_alphas(model)
    measured = calibrate_gates(model, model.closed_fraction, target)
    assert measured == pytest.approx(model.closed_fraction())
    assert abs(measured - target) <= 0.5 / sum(widths) + 1e-9  # the nearest count of gates
    after = _log_alphas(model)
    for g, la0, la1 in zip(model.gates, before, after):
        kept = g.kept()
        assert kept.any(), "no layer may be closed entirely"
        changed = kept != (sparsekern.hard_concrete_eval(la0) > 0)
        # only gates whose decision flipped moved, and a reopened gate passes half its signal
        torch.testing.assert_close(la1[~changed], la0[~changed])
        torch.testing.assert_close(sparsekern.hard_concrete_eval(la1[changed & kept]),
                                   torch.full_like(la1[changed & kept], 0.5))
        assert (sparsekern.hard_concrete_eval(la1[changed & ~kept]) == 0).all()


@pytest.mark.parametrize("order,kept", [
    ("global", [[True, True, True, False], [True, False, False, False]]),  # the highest log_alphas anywhere
    ("per_layer", [[True, True, False, False], [True, True, False, False]]),  # half of each layer
    ("auto", [[True, True, True, False], [True, False, False, False]]),  # independent gates: global
])
def test_keep_orders(order, kept):
    model = Gated([4, 4])
    with torch.no_grad():
        model.gates[0].log_alpha.copy_(torch.tensor([3.0, 2.9, 2.8, 2.7]))
        model.gates[1].log_alpha.copy_(torch.tensor([1.0, 0.9, 0.8, 0.7]))
    calibrate_gates(model, model.closed_fraction, 0.5, order=order)
    assert [g.kept().tolist() for g in model.gates] == kept
    with pytest.raises(ValueError, match="order"):
        calibrate_gates(model, model.closed_fraction, 0.5, order="random")


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_every_layer_closes_the_same_fraction_of_its_open_gates(target):
    """A layer whose log_alphas all sit lower (a saturated generator's) is not emptied first."""
    model = Gated([300, 100, 50])
    with torch.no_grad():
        model.gates[0].log_alpha.copy_(4.0 + 0.01 * torch.rand(300))
        model.gates[1].log_alpha.copy_(2.0 + 0.01 * torch.rand(100))
        model.gates[2].log_alpha.copy_(torch.cat([torch.full((25,), 3.0), torch.full((25,), -4.0)]))  # half open
    calibrate_gates(model, model.closed_fraction, target, order="per_layer")
    opened_before = [300, 100, 25]
    closed = 1.0 - target
    for g, n in zip(model.gates, opened_before):
        kept = int(g.kept().sum())
        assert abs(kept / n - (closed * 450 / 425)) <= 0.02 + 1.0 / n, (kept, n)


def test_cheap_gates_fill_the_gap_an_expensive_boundary_gate_leaves():
    """Layer A's gates cost 20% each, B's 1%; keeping whole prefixes of the order lands 9 points off."""
    model = Gated([4, 20])
    with torch.no_grad():
        model.gates[0].log_alpha.copy_(torch.tensor([4.0, 3.0, 2.0, 1.0]))
        model.gates[1].log_alpha.copy_(torch.linspace(0.9, 0.5, 20))
    cost = [0.2, 0.01]

    def pruned():
        return 1.0 - sum(c * int(g.kept().sum()) for c, g in zip(cost, model.gates))

    assert calibrate_gates(model, pruned, 0.5) == pytest.approx(0.5)
    assert [int(g.kept().sum()) for g in model.gates] == [2, 10]
    # the boundary gate (20%) lands nearer than the prefix before it, but on the far side:
    # the fill starts below the target and does not jump over it
    assert calibrate_gates(model, pruned, 0.47) == pytest.approx(0.47)


def test_calibrated_generator_state_round_trips_and_old_offsets_load():
    torch.manual_seed(1)
    model = Gated([8, 8], "forward")
    calibrate_gates(model, model.closed_fraction, 0.5)
    copy = Gated([8, 8], "forward")
    copy.load_state_dict(model.state_dict())
    for a, b in zip(_log_alphas(model), _log_alphas(copy)):
        torch.testing.assert_close(a, b)
    old = {k: v for k, v in model.state_dict().items()}
    old["gate_generator.offset"] = torch.tensor(0.25)  # checkpoints with one common offset
    copy.load_state_dict(old)
    torch.testing.assert_close(copy.gate_generator.offset, torch.full((16,), 0.25))


def test_refuses_models_without_gates_or_with_foreign_sources():
    with pytest.raises(ValueError, match="no hard-concrete gates"):
        calibrate_gates(nn.Linear(2, 2), lambda: 0.0, 0.5)
    gate = snn.ChannelGate(3, log_alpha_source=lambda: torch.zeros(3))
    with pytest.raises(ValueError, match="cannot calibrate"):
        calibrate_gates(gate, lambda: 0.0, 0.5)


class Plant:
    """A stand-in for training: the pruned fraction creeps towards what lambda asks, with a lag;
    ``calibrate(value)`` sets it exactly, as ``calibrate_gates`` does on a model."""

    def __init__(self, follow=0.05):
        self.value, self.follow, self.calls, self.finals = 0.0, follow, [], []

    def advance(self, lam):
        self.value += self.follow * (min(1.0, lam / 10.0) - self.value)

    def calibrate(self, value, final):
        self.calls.append(value)
        self.finals.append(final)
        self.value = value
        return value


@pytest.mark.parametrize("follow", [0.0, 0.01, 0.2])  # a frozen plant, a slow one, a quick one
def test_target_lambda_lands_and_calibrates_only_when_off_schedule(follow):
    plant = Plant(follow)
    control = TargetLambda(lambda: plant.value, 0.6, 200, 1.0, calibrate=plant.calibrate)
    for _ in range(200):
        plant.advance(control.lam)
        control.step()
    assert plant.calls[-1] == 0.6 and control.last_measured == pytest.approx(0.6)
    assert plant.finals == [False] * (len(plant.calls) - 1) + [True]  # only the last step fills
    ramp = plant.calls[:-1]
    assert all(0.0 < c <= 0.6 for c in ramp)
    if follow == 0.0:  # nothing moves by itself: the schedule is followed by calibrations alone
        assert len(ramp) >= 5 and ramp == sorted(ramp)


def test_target_lambda_raises_lambda_when_behind_and_resumes():
    control = TargetLambda(lambda: 0.0, 0.5, 100, 1.0)
    lams = []
    for _ in range(30):
        control.step()
        lams.append(control.lam)
    assert lams == sorted(lams) and lams[-1] > 1.0
    again = TargetLambda(lambda: 0.0, 0.5, 100, 1.0)
    again.load_state_dict(control.state_dict())
    assert (again.step_count, again.lam) == (control.step_count, control.lam)
    with pytest.raises(ValueError, match="lam"):
        TargetLambda(lambda: 0.0, 0.5, 100, 0.0)
