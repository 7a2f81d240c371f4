"""str / l0 / gmp on the tiny transformers (BERT, GPT-2, ViT, Llama, the built-in one, and a
classifier on torch's nn.TransformerEncoder): their
sparsity targets land within a point through the Method interface the trainer calls, and
``finalize`` keeps the eval function."""
from __future__ import annotations

import pytest
import torch

import sparsekern as sk
from sparsekern.pruning.methods import METHODS
from sparsekern.pruning.surgery.modules import global_sparsity
from sparsekern.pruning.train.config import PruneConfig
from transformer_cases import MODELS, _forward, _input, _model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
@pytest.mark.parametrize("kind", MODELS + ["torch_encoder"])
def test_unstructured_targets_land_within_one_point(kind, method):
    """The trainer's calls on the Method interface (optimizers, penalty, after_step, controller)."""
    target, steps = 0.7, 40
    m = METHODS[method](PruneConfig(method=method, model="lenet300", data="digits", target_sparsity=target))
    model = m.sparsify(_model(kind))
    x = _input(kind, batch=4)
    controller = m.controller(model, steps, x)
    optimizers = [o for o in m.optimizers(m.param_groups(model)) if o is not None]
    for _ in range(steps):
        model.train()
        m.set_gate_modes(model)
        loss = _forward(model, x).square().mean()
        penalty = m.penalty(model, 1)
        if penalty is not None:
            loss = loss + penalty
        for o in optimizers:
            o.zero_grad()
        loss.backward()
        for o in optimizers:
            o.step()
        m.after_step(model)
        controller.step()
    assert abs(global_sparsity(model) - target) <= 0.01


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
@pytest.mark.parametrize("kind", MODELS + ["torch_encoder"])
def test_unstructured_methods_train_and_finalize(kind, method):
    model = sk.sparsify(_model(kind), method)
    x = _input(kind)
    model.train()
    _forward(model, x).square().mean().backward()
    model.eval()
    with torch.no_grad():
        expected = _forward(model, x)
        torch.testing.assert_close(_forward(sk.finalize(model, shrink=False), x), expected, rtol=1e-5, atol=1e-5)
