"""The papers' own training recipes (``sparsekern prune --recipe paper``) and the per-recipe
learning-rate and EMA defaults; the shared L0 defaults are in ``sparsekern.pruning.defaults``."""
from __future__ import annotations

import re

from torch import nn

from sparsekern.pruning.surgery.modules import gate_modules
from sparsekern.pruning.surgery.sparsify import LAYER_TYPES, sparsify

# ---------------------------------------------------------------- the papers' own recipes
# L0 (AMLab-Amsterdam/L0_regularization): Adam at 1e-3 on every parameter, no optimizer weight
# decay (the L2 sits in the penalty, prior_prec = N * weight_decay), gates on the input neurons
# of each Linear (drop rate 0.2 for the layer reading the data, 0.5 elsewhere) and on the output
# feature maps of each conv (0.5), log_alpha clamped after every step, evaluation with an EMA of
# the parameters (beta 0.999, the MLP's), constant learning rate.
L0_PAPER_LR = 1e-3
L0_PAPER_INPUT_DROP_RATE = 0.2
L0_PAPER_DROP_RATE = 0.5
L0_PAPER_GRANULARITY = {nn.Linear: "in", nn.Conv2d: "out"}
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
    layers = [(n, m) for n, m in model.named_modules() if type(m) in LAYER_TYPES["l0"]]
    first_reads_data = bool(layers) and type(layers[0][1]) is nn.Linear
    if isinstance(model, (nn.Linear, nn.Conv2d)):  # a bare layer
        return sparsify(model, "l0", granularity=L0_PAPER_GRANULARITY[type(model)],
                        drop_rate=L0_PAPER_INPUT_DROP_RATE if first_reads_data else L0_PAPER_DROP_RATE)
    if first_reads_data:
        model = sparsify(model, "l0", include=f"re:^{re.escape(layers[0][0])}$", granularity="in",
                         drop_rate=L0_PAPER_INPUT_DROP_RATE)
    for kind, granularity in L0_PAPER_GRANULARITY.items():  # the paper's, whatever defaults.L0_GRANULARITY is
        names = [n for n, m in layers[1 if first_reads_data else 0:] if type(m) is kind]
        if names:
            model = sparsify(model, "l0", include="re:^(" + "|".join(map(re.escape, names)) + ")$",
                             granularity=granularity, drop_rate=L0_PAPER_DROP_RATE)
    return model


def clamp_log_alpha(model: nn.Module) -> None:
    """Clamp every gate's log_alpha to [log 0.01, log 100]; call after each optimizer step."""
    for _, module in gate_modules(model):
        module.clamp_log_alpha_()
