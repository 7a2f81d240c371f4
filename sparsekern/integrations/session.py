"""``SparsitySession``: one pruning method driven from someone else's training loop.

The Hugging Face and Lightning callbacks (``integrations.hf``, ``integrations.lightning``) are thin
adapters around this object; it calls only the ``Method`` interface our own trainer calls
(``pruning/methods/base.py``), in the same order:

* ``apply(model)``: sparsify in place (options such as ``include``/``exclude``/``layers`` are
  passed to ``sparsify``), before the framework builds its optimizer;
* ``start(model, optimizers, total_steps)``: the controller (targets), and the gates' own Adam at
  the method's gate rate, the gates taken out of the framework's optimizers (as our trainer
  keeps them out of SGD: weight decay and the weights' schedule must not move them);
* ``before_optimizer_step()`` once per optimizer step, after the backward of the last
  micro-batch: the penalty's gradient added (``penalty.backward()``: once per step, so gradient
  accumulation does not multiply it) and the gates stepped;
* ``after_optimizer_step()``: the controller's step and the method's ``after_step``;
* ``metrics()``: what goes to the user's logger; ``finalize()``: the plain model;
* ``state_dict()`` / ``load_state_dict()``: the controller and the gates' Adam in a framework's
  checkpoint (the sparse layers' thresholds, gate logits, masks and noise counters are in the model's).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sparsekern.nn import HardConcreteGates
from sparsekern.pruning.methods import METHODS
from sparsekern.pruning.methods.base import flops_fraction
from sparsekern.pruning.methods.l0 import ChannelL0
from sparsekern.pruning.surgery.sparsify import sparsify
from sparsekern.pruning.train.config import PruneConfig

SPARSE_METHODS = ("str", "l0", "gmp", "l0_hc", "dep_l0")


class SparsitySession:
    """One method (``"str"``, ``"l0"``, ``"gmp"``, ``"l0_hc"``, ``"dep_l0"``) on one model.

    target_sparsity (str, l0, gmp; gmp needs it) / target_flops (l0_hc, dep_l0) / lam / gate_lr /
    dependency (dep_l0) / s_init (str): as ``sparsekern prune``'s options of the same names.
    num_samples: the training-set size, for the L0 penalty without a target (lam / N); the
    callbacks take it from the training data when not given. example: a batch of model inputs
    (a tensor, a tuple, or a dict of keyword inputs) for the FLOPs of the structured methods; the
    callbacks take the first training batch when not given. ``sparsify_options`` go to
    ``sparsify`` (``include``, ``exclude``, ``keep_first``, ``layers``, ``granularity``, ...).
    """

    def __init__(self, method: str, *, target_sparsity: float | None = None, target_flops: float | None = None,
                 lam: float | None = None, gate_lr: float | None = None, dependency: str | None = None,
                 s_init: float | None = None, num_samples: int | None = None, example=None, **sparsify_options):
        if method not in SPARSE_METHODS:
            raise ValueError(f"method must be one of {', '.join(SPARSE_METHODS)}, got {method!r}")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.config = PruneConfig(method=method, target_sparsity=target_sparsity, target_flops=target_flops,
                                  lam=lam, gate_lr=gate_lr, dependency=dependency, s_init=s_init)
        self.config.validate()  # one-line ValueErrors naming the option
        if method == "str" and lam is not None:
            raise ValueError("lam for method 'str' is the thresholds' weight decay in sparsekern's own optimizer; "
                             "with a framework's optimizer set the decay of the 's' parameters there")
        self.method = METHODS[method](self.config)
        self.sparsify_options = sparsify_options
        self.num_samples, self.example = num_samples, example
        self.model: nn.Module | None = None
        self.controller = self.gate_optimizer = None
        self.final_model: nn.Module | None = None
        self._gates: list[nn.Parameter] = []
        self._hooks: list = []

    # ------------------------------------------------------------ before the framework's optimizer
    def apply(self, model: nn.Module) -> nn.Module:
        """Sparsify ``model`` in place (returns it); frozen gates then stay deterministic in training
        forwards, whatever ``model.train()`` the framework calls."""
        if self.model is not None:
            raise RuntimeError("SparsitySession.apply: this session already sparsified a model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"SparsitySession.apply: model must be an nn.Module, got {type(model).__name__}")
        opts = dict(self.sparsify_options)
        if self.config.s_init is not None:
            opts["s_init"] = self.config.s_init
        if self.config.method == "dep_l0":
            opts["dependency"] = self.config.dependency or "forward"
        result = sparsify(model, self.config.method, **opts)
        if result is not model:
            raise ValueError("SparsitySession.apply: model must contain the layers to sparsify (a bare layer "
                             "cannot be replaced in place)")
        self.model = model
        for module in model.modules():
            if isinstance(module, HardConcreteGates):
                self._hooks.append(module.register_forward_pre_hook(self._frozen_gates_deterministic))
        return model

    def _frozen_gates_deterministic(self, module, args):
        # Method.set_gate_modes after every model.train(): the frameworks call train() themselves.
        if self.method.frozen and module.training:
            module.eval()

    # ------------------------------------------------------------ at the start of training
    def start(self, optimizers, total_steps: int, *, num_samples: int | None = None, example=None) -> None:
        """Build the controller for ``total_steps`` optimizer steps and the gates' Adam; take the gate
        parameters out of ``optimizers`` (the framework's, built over every parameter)."""
        if self.model is None:
            raise RuntimeError("SparsitySession.start: apply(model) first")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        self.num_samples = self.num_samples or num_samples
        if self.example is None:
            self.example = example
        if isinstance(self.method, ChannelL0) and self.example is None:
            raise ValueError(f"method {self.config.method!r} needs an example batch of model inputs (example=)")
        if self.example is not None:
            self.example = _to_device(self.example, _device(self.model))
        self.controller = self.method.controller(self.model, total_steps, self.example)
        self.exclude_gates(optimizers)
        if self._gates:
            self.gate_optimizer = torch.optim.Adam(self._gates, lr=self.method.gate_lr())

    def exclude_gates(self, optimizers) -> None:
        """Take the gate parameters out of ``optimizers`` (a framework's, built over every parameter);
        ``start`` does it, and a framework that loads an optimizer's saved state before training
        starts needs it done when the optimizer is built (the state has no gates)."""
        groups = self.method.param_groups(self.model)
        self._gates = [p for g in groups if g.get("name") == "gates" for p in g["params"]]
        gate_ids = {id(p) for p in self._gates}
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in gate_ids]

    # ------------------------------------------------------------ every optimizer step
    def before_optimizer_step(self) -> Tensor | None:
        """Add the penalty's gradient and step the gates; returns the penalty (detached) or None."""
        penalty = self.method.penalty(self.model, self._num_samples())
        if penalty is not None and penalty.requires_grad:
            penalty.backward()
        if self.gate_optimizer is not None:
            self.gate_optimizer.step()
            self.gate_optimizer.zero_grad(set_to_none=True)
        return None if penalty is None else penalty.detach()

    def after_optimizer_step(self) -> None:
        if self.controller is not None and not self.method.frozen:
            self.controller.step()
        self.method.after_step(self.model)

    def _num_samples(self) -> int:
        if self.num_samples is None and self.config.method == "l0" and self.config.target_sparsity is None:
            raise ValueError(f"method {self.config.method!r} without a target needs num_samples (the training-set "
                             "size) for its penalty")
        return self.num_samples or 1  # the other penalties do not divide by the data size

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The controller's and the gates' optimizer's state (the sparse layers' own state is in the
        model's state_dict), for a framework checkpoint."""
        return {"controller": self.controller.state_dict() if self.controller is not None else {},
                "gate_optimizer": self.gate_optimizer.state_dict() if self.gate_optimizer is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; after ``start`` (which builds what it restores)."""
        if not isinstance(state, dict) or set(state) != {"controller", "gate_optimizer"}:
            raise ValueError("SparsitySession.load_state_dict: expected the dict of SparsitySession.state_dict()")
        if self.controller is not None:
            self.controller.load_state_dict(state["controller"])  # a frozen DualLambda re-freezes the gates
        if self.gate_optimizer is not None:
            self.gate_optimizer.load_state_dict(state["gate_optimizer"])

    # ------------------------------------------------------------ logging and the end
    def metrics(self) -> dict[str, float]:
        """``sparsity`` (the method's progress number: zero weights of the sparse layers, or closed
        channels for l0_hc / dep_l0), ``flops_fraction`` (effective / dense FLOPs, when an example is
        known) and ``lambda`` (the controller's multiplier, when it has one)."""
        out = {"sparsity": float(self.method.sparsity(self.model))}
        if self.example is not None:
            out["flops_fraction"] = float(flops_fraction(self.model, self.example))
        lam = getattr(self.controller, "lam", None)
        if lam is not None:
            out["lambda"] = float(lam)
        return out

    def finalize(self) -> nn.Module:
        """The plain model (``Method.export``: sparse layers baked into the original types, a copy),
        in eval mode; also kept as ``final_model``. The sparse model is left as it is."""
        if self.model is None:
            raise RuntimeError("SparsitySession.finalize: apply(model) first")
        for handle in self._hooks:  # the copy must not carry hooks into this session
            handle.remove()
        try:
            self.final_model = self.method.export(self.model)
        finally:
            self._hooks = [m.register_forward_pre_hook(self._frozen_gates_deterministic)
                           for m in self.model.modules() if isinstance(m, HardConcreteGates)]
        return self.final_model


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to_device(example, device):
    if isinstance(example, Tensor):
        return example.to(device)
    if isinstance(example, Mapping):
        return {k: _to_device(v, device) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_to_device(v, device) for v in example)
    return example
