"""The L0 training defaults shared by the library (``sparsify``, ``regularization``,
``make_optimizers``) and ``sparsekern prune``, so both train the same way.

Louizos et al. 2018, adapted to short runs: the paper's granularity (one gate per input neuron
of a Linear, per output feature map of a conv) and lambda; gates trained by their own Adam at a
constant rate well above the paper's 1e-3 (it had ~100k steps); initial drop rate 0.1, not the
paper's 0.2 (input) / 0.5: gates at 0.5 halve and randomise every gated layer's signal, so on
short runs the net barely learns (LeNet-5/digits, lambda 0: 0.63 after 6 epochs) and the penalty
closes everything (LeNet-300/digits: 64% sparse at lambda 0.015, 96% at chance at 0.03).
Measured with 0.1, LeNet-300-100 on digits, 10 epochs (dense 0.978): lambda 0.03 -> 28% sparse
at 0.978, 0.1 -> 58% at 0.961-0.964 (2 seeds), 0.2 -> 73% at 0.947, 0.3 -> 80% at 0.908.
Per-weight gates with one SGD for everything gave no useful lambda on LeNet-300/digits:
250 -> 0% sparse, 400 -> 100%, both at chance.
"""
from __future__ import annotations

import re

import torch
from torch import nn

L0_LAMBDA = 0.1  # penalty per open weight, divided by the training-set size
L0_GATE_LR = 0.05  # Adam learning rate of the gates' log_alpha
L0_DROP_RATE = 0.1  # initial drop rate of every gate
L0_GRANULARITY = {nn.Linear: "in", nn.Conv2d: "out"}


def default_layer_options(method: str, dense_type: type) -> dict:
    """Constructor options ``sparsify`` gives a new sparse layer unless the caller overrides them."""
    if method != "l0":
        return {}
    return {"granularity": L0_GRANULARITY[dense_type], "drop_rate": L0_DROP_RATE}


def make_optimizers(groups: list[dict], *, lr: float, momentum: float = 0.9, gate_lr: float = L0_GATE_LR):
    """``(SGD over every group but the gates, Adam over the "gates" group or None)`` for groups from
    ``param_groups``. The gates get their own Adam at a constant rate (the L0 paper trains with
    Adam): the pace of a gate is then set by ``gate_lr``, not by the scale of lambda. Step both."""
    gates = [g for g in groups if g.get("name") == "gates"]
    rest = [g for g in groups if g.get("name") != "gates"]
    optimizer = torch.optim.SGD(rest, lr=lr, momentum=momentum)
    if not gates:
        return optimizer, None
    return optimizer, torch.optim.Adam([{**g, "lr": gate_lr} for g in gates], lr=gate_lr)


# ---------------------------------------------------------------- the papers' own recipes
# L0 (AMLab-Amsterdam/L0_regularization): Adam at 1e-3 on every parameter, no optimizer weight
# decay (the L2 sits in the penalty, prior_prec = N * weight_decay), gates on the input neurons
# of each Linear (drop rate 0.2 for the layer reading the data, 0.5 elsewhere) and on the output
# feature maps of each conv (0.5), log_alpha clamped after every step, evaluation with an EMA of
# the parameters (beta 0.999, the MLP's), constant learning rate.
L0_PAPER_LR = 1e-3
L0_PAPER_INPUT_DROP_RATE = 0.2
L0_PAPER_DROP_RATE = 0.5
L0_PAPER_EMA = 0.999
# STR (RAIVNLab/STR): its ResNet-50 config's initial threshold logit; every parameter, BatchNorm
# and biases included, decays with the weight decay, the thresholds too (unless given their own).
STR_PAPER_S_INIT = -3200.0
RECIPES = ("default", "paper")


def default_lr(method: str, recipe: str) -> float:
    return L0_PAPER_LR if (method, recipe) == ("l0", "paper") else 0.05


def default_ema(method: str, recipe: str) -> float:
    """EMA beta for evaluation; 0 is off."""
    return L0_PAPER_EMA if (method, recipe) == ("l0", "paper") else 0.0


def sparsify_l0_paper(model: nn.Module) -> nn.Module:
    """L0 gates as the reference code places them: per input neuron of a Linear, per output map of
    a conv; initial drop rate 0.2 for a Linear that reads the data (the MLP's input layer), 0.5
    for every other layer. Returns the model (or the new layer, for a bare layer)."""
    from sparsekern.pruning.sparsify import LAYER_TYPES, sparsify

    layers = [(n, m) for n, m in model.named_modules() if type(m) in LAYER_TYPES["l0"]]
    first_reads_data = bool(layers) and type(layers[0][1]) is nn.Linear
    if first_reads_data:
        model = sparsify(model, "l0", include=f"re:{re.escape(layers[0][0])}",
                         drop_rate=L0_PAPER_INPUT_DROP_RATE)
    return sparsify(model, "l0", drop_rate=L0_PAPER_DROP_RATE)


def l0_paper_optimizer(model: nn.Module, lr: float = L0_PAPER_LR) -> torch.optim.Adam:
    """Adam on every parameter, no weight decay."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def clamp_log_alpha(model: nn.Module) -> None:
    """Clamp every gate's log_alpha to [log 0.01, log 100]; call after each optimizer step."""
    from sparsekern.pruning.modules import gate_modules

    for _, module in gate_modules(model):
        module.clamp_log_alpha_()
