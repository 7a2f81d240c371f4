"""``SparsitySession``: the Method interface driven from a foreign loop (what both callbacks use).

References: the penalty's gradient by autograd on a copy, the gates' Adam step by torch's Adam on
a copy at the method's gate rate, and the controllers' step counts.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekern as sk
from sparsekern.integrations import SparsitySession
from sparsekern.pruning import defaults

pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def test_penalty_gradient_and_gate_step_match_the_reference():
    torch.manual_seed(0)
    session = SparsitySession("l0", lam=0.5, num_samples=100)
    model = session.apply(_net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session.start([optimizer], total_steps=10)
    gates = [model[0].log_alpha, model[2].log_alpha]
    kept = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(g) in kept for g in gates) and id(model[0].weight) in kept  # gates left the user's optimizer
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x), y).backward()
    data_grads = [g.grad.clone() for g in gates]
    # reference: the penalty's gradient on a copy of the gates, then torch's Adam at the gate rate
    ref = [g.detach().clone().requires_grad_(True) for g in gates]
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer, r in zip((twin[0], twin[2]), ref):
            layer.log_alpha = nn.Parameter(r)
    sk.regularization(twin, lam=0.5, num_samples=100).backward()
    expected_grads = [d + t.log_alpha.grad for d, t in zip(data_grads, (twin[0], twin[2]))]
    reference_adam = torch.optim.Adam([t.log_alpha for t in (twin[0], twin[2])], lr=defaults.L0_GATE_LR)
    for t, g in zip((twin[0], twin[2]), expected_grads):
        t.log_alpha.grad = g.clone()
    reference_adam.step()
    penalty = session.before_optimizer_step()
    torch.testing.assert_close(penalty, sk.regularization(twin, lam=0.5, num_samples=100).detach(), rtol=1e-3, atol=0)
    for g, t in zip(gates, (twin[0], twin[2])):
        torch.testing.assert_close(g.detach(), t.log_alpha.detach(), rtol=0, atol=0)
        assert g.grad is None  # zeroed after its own step: the user's optimizer does not hold it


@pytest.mark.parametrize("method,target", [("str", 0.8), ("gmp", 0.8), ("l0", 0.8)])
def test_a_plain_loop_lands_on_the_target_and_finalizes(method, target):
    torch.manual_seed(1)
    session = SparsitySession(method, target_sparsity=target)
    model = session.apply(_net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 40
    session.start([optimizer], total_steps=steps)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        session.before_optimizer_step()
        optimizer.step()
        optimizer.zero_grad()
        session.after_optimizer_step()
    assert abs(session.metrics()["sparsity"] - target) < 0.01
    if method != "l0":
        assert session.controller.step_count == steps
    model.eval()
    plain = session.finalize()
    assert not any(isinstance(m, sk.nn.SparseModule) for m in plain.modules())
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_frozen_gates_stay_deterministic_after_train():
    torch.manual_seed(2)
    session = SparsitySession("l0", target_sparsity=0.5)
    model = session.apply(_net())
    session.start([], total_steps=4)
    session.method.freeze(model)
    model.train()  # what the frameworks call before every step
    x = torch.randn(4, 6)
    offset = model[0].noise_offset
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert model[0].noise_offset == offset  # no gate was sampled


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        SparsitySession("dense")
    with pytest.raises(ValueError, match="target_sparsity"):
        SparsitySession("str", target_sparsity=1.5)
    with pytest.raises(ValueError, match="needs target_sparsity"):
        SparsitySession("gmp")
    with pytest.raises(ValueError, match="num_samples"):
        SparsitySession("l0", num_samples=0)
    with pytest.raises(ValueError, match="lam for method 'str'"):
        SparsitySession("str", lam=1e-4)
    session = SparsitySession("l0_hc", target_flops=0.5, layers=["0"])
    session.apply(_net())
    with pytest.raises(ValueError, match="example"):
        session.start([], total_steps=5)
    session = SparsitySession("l0")
    session.apply(_net())
    session.start([], total_steps=5)
    with pytest.raises(ValueError, match="num_samples"):
        session.before_optimizer_step()
