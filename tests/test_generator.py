"""Dep-L0's gate generator: SPEC 3 recipe, one pass per step, state_dict, deep copies."""
import copy
import math

import pytest
import torch
from torch import nn

from sparsekern import nn as snn


def _by_hand(gen, widths, reverse):
    """SPEC 3 written out independently of GateGenerator.forward."""
    h = torch.ones(widths[-1] if reverse else widths[0])
    outs = []
    for layer in gen.layers:
        h = math.log(100) * torch.tanh(h @ layer.weight.T + layer.bias)
        outs.append(h)
    return outs[::-1] if reverse else outs


@pytest.mark.parametrize("dependency", ["forward", "backward"])
def test_generator_follows_the_recipe(dependency):
    torch.manual_seed(0)
    widths = [4, 6, 3]
    gen = snn.GateGenerator(widths, dependency)
    outs = gen()
    assert [o.shape[0] for o in outs] == widths
    for got, want in zip(outs, _by_hand(gen, widths, dependency == "backward")):
        torch.testing.assert_close(got, want)
    assert gen.layers[0].in_features == (4 if dependency == "forward" else 3)
    biases = torch.cat([layer.bias for layer in gen.layers])
    assert abs(biases.mean().item() - 3.0) < 0.02 and biases.std().item() < 0.03


def test_init_opens_most_gates():
    torch.manual_seed(1)
    gen = snn.GateGenerator([64, 64, 128, 128, 256])
    la = torch.cat(gen())
    p_open = snn.gate_open_probability(la)
    assert 2.5 < la.mean().item() < 4.5 and 0.85 < p_open.mean().item() < 0.97


def test_one_pass_per_step_shared_by_gates_and_penalty():
    torch.manual_seed(2)
    gen = snn.GateGenerator([5, 5])
    calls = []
    gen.register_forward_hook(lambda *a: calls.append(1))
    gates = [snn.ChannelGate(5, log_alpha_source=gen.source(i)) for i in range(2)]
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    x = torch.randn(3, 5, 2, 2)
    for step in range(3):
        y = gates[1](gates[0](x))
        penalty = sum(g.expected_l0() for g in gates)
        (y.sum() + penalty).backward()
        opt.step()
        opt.zero_grad()
        assert len(calls) == step + 1
    # without an optimizer step, a second backward still works (the consumed pass is recomputed)
    gates[0](x).sum().backward()
    gates[0](x).sum().backward()
    with torch.no_grad():
        before = gates[0].eval_gates()
    assert before.shape == (5,)


def test_state_dict_and_deepcopy():
    torch.manual_seed(3)
    model = nn.Module()
    model.gate_generator = snn.GateGenerator([4])
    model.gate = snn.ChannelGate(4, log_alpha_source=model.gate_generator.source(0))
    assert any(k.startswith("gate_generator.layers.0") for k in model.state_dict())
    copied = copy.deepcopy(model)
    assert copied.gate.log_alpha_source.generator is copied.gate_generator
    with torch.no_grad():
        copied.gate_generator.layers[0].bias.fill_(-10)
    assert bool((copied.gate.eval_gates() == 0).all()) and bool((model.gate.eval_gates() > 0).all())


def test_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        snn.GateGenerator([])
    with pytest.raises(ValueError, match="dependency"):
        snn.GateGenerator([3], "sideways")
    with pytest.raises(IndexError, match="index"):
        snn.GateGenerator([3]).source(1)


@pytest.mark.parametrize("model,dependency,first_in", [
    ("vgg16", "forward", 64), ("vgg16", "backward", 64),  # the reference VGG feeds ones(64) both ways
    ("resnet20", "forward", 16), ("resnet20", "backward", 64),  # its ResNets: the chain's first width
])
def test_generator_input_width_follows_the_reference(model, dependency, first_in):
    from sparsekern import pruning
    from sparsekern.models import build_model

    net = pruning.sparsify(build_model(model, 10, 3, 8), "dep_l0", dependency=dependency)
    assert net.gate_generator.layers[0].in_features == first_in
    with pytest.raises(ValueError, match="input_width"):
        snn.GateGenerator([4], input_width=0)
