"""The papers' recipes (`--recipe paper` and its library pieces) against the original code's formulas."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsekern import pruning
from sparsekern.cli import main
from sparsekern.models import build_model
from sparsekern.nn import L0Conv2d, L0Linear, STRLinear
from sparsekern.pruning.methods import recipes
from sparsekern.pruning.train.checkpoint import load_checkpoint
from sparsekern.pruning.train.ema import ParameterEMA
from sparsekern.pruning.methods import METHODS
from sparsekern.pruning.train.loop import PruneConfig


def _setup_method(model, cfg, total_steps):
    """(model, groups, controller) as the trainer sets them up through the method's interface."""
    method = METHODS[cfg.method](cfg)
    model = method.sparsify(model)
    return model, method.param_groups(model), method.controller(model, total_steps, torch.zeros(1, 1, 8, 8))

pytestmark = pytest.mark.usefixtures("one_thread")


def _p(log_alpha, beta=2 / 3, gamma=-0.1, zeta=1.1):
    """1 - CDF(0) of the stretched concrete, clamped, written as the reference code computes it."""
    q0 = torch.sigmoid(math.log(-gamma / zeta) * beta - log_alpha).clamp(1e-6, 1 - 1e-6)
    return 1 - q0


def test_reference_penalty_terms_match_the_reference_formulas():
    torch.manual_seed(0)
    lin = L0Linear(5, 3, granularity="in")
    conv = L0Conv2d(2, 4, 3, granularity="out")
    with torch.no_grad():
        for m in (lin, conv):
            m.log_alpha.normal_(0, 3)
            m.log_alpha[0] = 40.0  # P rounds to 1 - 1e-6 under the clamp
            m.bias.normal_()
    lam, prior, n = 0.7, 3.0, 100
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(5), lin)
    model(torch.randn(1, 2, 5, 5))
    model[2] = nn.Identity()
    # Linear, gates on the 5 inputs: sum_i P_i sum_j (0.5 prior w_ji^2 + lam) + ungated 0.5 prior sum b^2
    want_lin = (_p(lin.log_alpha) * (0.5 * prior * lin.weight.pow(2) + lam).sum(0)).sum() \
        + 0.5 * prior * lin.bias.pow(2).sum()
    # Conv, gates on the 4 output maps: sum_o P_o (sum (0.5 prior w^2 + lam) + 0.5 prior b_o^2 - lam)
    p = _p(conv.log_alpha)
    want_conv = (p * (0.5 * prior * conv.weight.pow(2) + lam).sum((1, 2, 3))).sum() \
        + (p * (0.5 * prior * conv.bias.pow(2) - lam)).sum()
    got = pruning.regularization(model, lam=lam, num_samples=n, prior_prec=prior, reference_terms=True)
    torch.testing.assert_close(got, (want_lin + want_conv) / n)
    plain = pruning.regularization(model, lam=lam, num_samples=n, prior_prec=prior)
    assert not torch.allclose(got, plain)  # the default penalty has no bias terms


def test_clamp_log_alpha_and_paper_gate_placement():
    model = recipes.sparsify_l0_paper(build_model("lenet300", 10, 1, (8, 8)))
    drop = {n: m.drop_rate for n, m in pruning.gate_modules(model)}
    assert drop == {"fc1": 0.2, "fc2": 0.5, "fc3": 0.5}  # the MLP's input layer 0.2
    assert all(m.granularity == "in" for _, m in pruning.gate_modules(model))
    lenet5 = recipes.sparsify_l0_paper(build_model("lenet5", 10, 1, (8, 8)))
    assert {m.drop_rate for _, m in pruning.gate_modules(lenet5)} == {0.5}  # its first layer is a conv
    with torch.no_grad():
        model.fc1.log_alpha.fill_(50.0)
        model.fc2.log_alpha.fill_(-50.0)
    recipes.clamp_log_alpha(model)
    assert model.fc1.log_alpha.max().item() == pytest.approx(math.log(100))
    assert model.fc2.log_alpha.min().item() == pytest.approx(math.log(0.01))


def test_parameter_ema_is_the_reference_average():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema = ParameterEMA(model, 0.9)
    seen = []
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        seen.append(model.weight.detach().clone())
        ema.update()
    avg = start
    for w in seen:
        avg = 0.9 * avg + 0.1 * w
    trained = model.weight.detach().clone()
    with ema.applied():
        torch.testing.assert_close(model.weight, avg / (1 - 0.9 ** 4))
    assert torch.equal(model.weight, trained)  # restored
    copy = ParameterEMA(model, 0.5)
    copy.load_state_dict(ema.state_dict())
    torch.testing.assert_close(copy.averaged()[0], ema.averaged()[0])


def test_paper_recipes_set_up_as_the_original_code():
    cfg = PruneConfig(method="l0", recipe="paper")
    assert (cfg.lr, cfg.ema) == (1e-3, 0.999)
    model, groups, controller = _setup_method(build_model("lenet300", 10, 1, (8, 8)), cfg, 10)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and controller is None
    assert len(groups[0]["params"]) == len(list(model.parameters()))
    cfg = PruneConfig(method="str", recipe="paper", lam=1e-4)
    assert cfg.s_init == -3200.0 and cfg.ema == 0.0
    model, groups, _ = _setup_method(build_model("lenet300", 10, 1, (8, 8)), cfg, 10)
    assert isinstance(model.fc1, STRLinear) and model.fc1.s.item() == -3200.0
    decays = {g["name"]: g["weight_decay"] for g in groups}
    assert decays == {"weights": 5e-4, "thresholds": 1e-4}  # biases decay with the weights, as in the STR code
    with pytest.raises(ValueError, match="no target"):
        PruneConfig(method="str", recipe="paper", target_sparsity=0.5).validate()
    with pytest.raises(ValueError, match="s_init"):
        PruneConfig(method="l0", s_init=-3.0).validate()


def test_l0_paper_run_from_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main(["prune", "--method", "l0", "--recipe", "paper", "--epochs", "1", "--no-progress",
                 "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["recipe"] == "paper" and state["ema"]["steps"] == 23
    for key, value in state["model"].items():
        if key.endswith("log_alpha"):
            assert math.log(0.01) - 1e-6 <= value.min() and value.max() <= math.log(100) + 1e-6
    assert "param_groups" in state["optimizer"] and not state["gate_optimizer"]  # one Adam for all


def test_str_s_init_from_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main(["prune", "--method", "str", "--s-init", "-3200", "--lambda", "0", "--epochs", "1",
                 "--no-progress", "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["model"]["fc1.s"].item() == -3200.0  # its gradient is 0 and lambda 0 leaves it there
