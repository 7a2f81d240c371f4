"""``ParameterEMA``: evaluate with an exponential moving average of the parameters (L0 paper).

The L0 reference code (AMLab-Amsterdam/L0_regularization) starts the average at the initial
parameters, updates ``avg = beta * avg + (1 - beta) * p`` after every step and evaluates with
``avg / (1 - beta**steps)``. Because the average does not start at zero, that division inflates
the parameters early on (by 1/(1 - beta**t): x4.9 after 230 steps at beta 0.999); it fades after
a few times 1/(1 - beta) steps, which the paper's ~100k-step runs are far beyond.
``reference_correction=True`` (the default) reproduces it; False evaluates with ``avg`` itself.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class ParameterEMA:
    """Moving average of every parameter of ``model``; ``update()`` after each optimizer step,
    ``with ema.applied(): evaluate(model)`` to evaluate with it."""

    def __init__(self, model: nn.Module, beta: float, *, reference_correction: bool = True):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta < 1.0:
            raise ValueError(f"ParameterEMA: beta must be in (0, 1), got {beta!r}")
        self.params = [p for p in model.parameters()]
        self.beta, self.reference_correction, self.steps = float(beta), bool(reference_correction), 0
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        for avg, p in zip(self.average, self.params):
            avg.mul_(self.beta).add_(p.detach(), alpha=1.0 - self.beta)

    @torch.no_grad()
    def averaged(self) -> list[torch.Tensor]:
        """The parameters to evaluate with."""
        if not self.reference_correction or self.steps == 0:
            return [a.clone() for a in self.average]
        scale = 1.0 / (1.0 - self.beta ** self.steps)
        return [a * scale for a in self.average]

    @contextlib.contextmanager
    def applied(self):
        """Swap the averaged parameters in for the ``with`` block, then restore the trained ones."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.averaged()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"beta": self.beta, "steps": self.steps, "average": [a.clone() for a in self.average],
                "reference_correction": self.reference_correction}

    def load_state_dict(self, state: dict) -> None:
        average = state["average"]
        if len(average) != len(self.average) or any(a.shape != b.shape for a, b in zip(average, self.average)):
            raise ValueError("ParameterEMA: the saved average does not match the model's parameters")
        self.beta, self.steps = float(state["beta"]), int(state["steps"])
        self.reference_correction = bool(state["reference_correction"])
        with torch.no_grad():
            for a, b in zip(self.average, average):
                a.copy_(b)
