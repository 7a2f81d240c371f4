"""The interface every pruning method implements; the trainer calls only this."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsekern.nn import GateGenerator, HardConcreteGates
from sparsekern.pruning import defaults
from sparsekern.pruning.methods.optim import param_groups
from sparsekern.pruning.surgery.finalize import finalize
from sparsekern.pruning.surgery.modules import global_sparsity, sparse_modules
from sparsekern.pruning.surgery.report import sparsity_report


class Method:
    """One pruning method, configured by a ``PruneConfig``.

    ``check`` refuses options the method does not take; ``sparsify`` converts the model;
    ``param_groups`` gives the optimizer groups and ``optimizers`` the optimizers over them (by
    default a group named "gates" goes to its own Adam at ``gate_lr``); ``after_step`` runs after
    each optimizer step; ``controller`` the per-step controller (``step()``, ``state_dict()``,
    ``load_state_dict()``) or None; ``penalty`` the loss term or None; ``sparsity`` the
    progress number logged per epoch; ``export`` the plain model written at the end.
    ``freeze`` enters the fine-tune phase (deterministic frozen gates, no penalty).
    """

    name = ""
    takes = ()  # optional config fields this method accepts (besides the common ones)
    gate_lr_default: float | None = None  # None: the method has no gates

    def __init__(self, config):
        self.config = config
        self.frozen = False

    @classmethod
    def check(cls, config) -> None:
        for field in ("target_sparsity", "target_flops", "lam", "gate_lr", "dependency"):
            if getattr(config, field) is not None and field not in cls.takes:
                raise ValueError(f"method {cls.name!r} does not take {field}")

    def sparsify(self, model: nn.Module) -> nn.Module:
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model, self.config.lr, self.config.weight_decay)

    def gate_lr(self) -> float:
        if self.config.gate_lr is not None:
            return self.config.gate_lr
        return self.gate_lr_default if self.gate_lr_default is not None else defaults.L0_GATE_LR

    def optimizers(self, groups: list[dict]):
        """(SGD over the weights, Adam over the "gates" group or None): ``defaults.make_optimizers``."""
        c = self.config
        return defaults.make_optimizers(groups, lr=c.lr, momentum=c.momentum, gate_lr=self.gate_lr())

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. the L0 paper's log_alpha clamp)."""

    def controller(self, model: nn.Module, total_steps: int, example: Tensor):
        return None

    def penalty(self, model: nn.Module, num_samples: int) -> Tensor | None:
        return None

    def sparsity(self, model: nn.Module) -> float:
        return float(global_sparsity(model))

    def report(self, model: nn.Module, example: Tensor) -> dict:
        """The per-layer rows of ``summary.json`` (``sparsity_report``, against the original widths)."""
        return sparsity_report(model, example)

    def final_sparsity(self, model: nn.Module, report: dict, exported: nn.Module) -> float:
        """Fraction of zero weights over the sparsified layers (``report``: ``sparsity_report(model)``)."""
        names = {name for name, _ in sparse_modules(model)}
        rows = [r for r in report["layers"] if r["name"] in names]
        return 1.0 - sum(r["nonzeros"] for r in rows) / sum(r["params"] for r in rows) if rows else 0.0

    def has_gates_or_thresholds(self) -> bool:
        """Whether eval differs from training (BatchNorm statistics need recalibrating)."""
        return True

    def export(self, model: nn.Module) -> nn.Module:
        return finalize(model, shrink=False).eval()

    def widths(self, exported: nn.Module) -> list[int] | None:
        """Kept channels per gate site of an exported shrunk model (``build_model(widths=)``), or None."""
        return None

    def freeze(self, model: nn.Module) -> None:
        """Fine-tune phase: gates deterministic and fixed, penalty off (SPEC 3, ResNet-50 recipe).

        Called at the start of every fine-tune epoch (also after a resume), so it must be idempotent."""
        self.frozen = True
        for module in model.modules():
            if isinstance(module, GateGenerator):
                module.requires_grad_(False)
            elif isinstance(module, HardConcreteGates) and module.log_alpha is not None:
                # Only the gates: an L0 layer is its own gate module, and its weight keeps training.
                module.log_alpha.requires_grad_(False)

    def set_gate_modes(self, model: nn.Module) -> None:
        """After model.train(): frozen gates run deterministic (eval) in training forwards."""
        if self.frozen:
            for module in model.modules():
                if isinstance(module, HardConcreteGates):
                    module.eval()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def flops_fraction(model: nn.Module, example: Tensor) -> float:
    """Effective / dense FLOPs of the eval-mode model (``sparsity_report``'s numbers)."""
    total = sparsity_report(model, example)["total"]
    return total["effective_flops"] / total["dense_flops"]
