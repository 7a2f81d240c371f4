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

import torch
from torch import nn

L0_LAMBDA = 0.1  # penalty per open weight, divided by the training-set size
L0_GATE_LR = 0.05  # Adam learning rate of the gates' log_alpha
L0_DROP_RATE = 0.1  # initial drop rate of every gate
# Issue 17: one gate per weight (unstructured, as Gale et al.'s L0). With the paper's per-input-neuron
# gates, 90% of LeNet-300's weights on a 40-feature input can only be reached by dropping >= 26 of
# the 40 inputs (a fc1 input gate holds 300 weights): free on MNIST's blank borders, fatal on data
# where every input matters (hold-out signals: 34% vs GMP's 67%). ``--recipe paper`` keeps the paper's.
L0_GRANULARITY = {nn.Linear: "weight", nn.Conv1d: "weight", nn.Conv2d: "weight"}


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
