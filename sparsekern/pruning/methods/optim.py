"""``param_groups``: optimizer groups with the weight decay each kind of parameter needs."""
from __future__ import annotations

from torch import nn

from sparsekern.nn import STR_LAYERS, GateGenerator, HardConcreteGates

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, *, threshold_weight_decay: float | None = None,
                 no_decay_norm_and_bias: bool = True) -> list[dict]:
    """Parameter groups for a torch optimizer, each with ``lr``, ``weight_decay`` and a ``name``:

    * ``weights``: every other parameter, ``weight_decay``;
    * ``no_decay``: biases and normalisation (BatchNorm/GroupNorm/LayerNorm) parameters, decay 0
      (the usual practice; pass ``no_decay_norm_and_bias=False`` to decay them like weights);
    * ``thresholds``: STR thresholds ``s``, ``threshold_weight_decay`` (None: same as
      ``weight_decay``, the STR paper's setting; with ``TargetSparsity`` any small value or 0
      works, the controller adds its own decay);
    * ``gates``: L0 ``log_alpha`` (layers and ChannelGate) and every parameter of a Dep-L0
      ``GateGenerator``, never decayed (the L0 penalty is their regulariser).
    Empty groups are left out. A parameter shared by several modules is listed once.
    """
    for name, v in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"param_groups: {name} must be a non-negative number, got {v!r}")
    if threshold_weight_decay is None:
        threshold_weight_decay = weight_decay
    elif isinstance(threshold_weight_decay, bool) or not isinstance(threshold_weight_decay, (int, float)):
        raise ValueError("param_groups: threshold_weight_decay must be a number or None, "
                         f"got {threshold_weight_decay!r}")
    decays = {"weights": weight_decay, "no_decay": 0.0, "thresholds": float(threshold_weight_decay), "gates": 0.0}
    groups: dict[str, list] = {k: [] for k in decays}
    seen: set[int] = set()
    generated = {id(p) for m in model.modules() if isinstance(m, GateGenerator) for p in m.parameters()}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, STR_LAYERS) and pname == "s":
                kind = "thresholds"
            elif id(p) in generated or (isinstance(module, HardConcreteGates) and pname == "log_alpha"):
                kind = "gates"
            elif no_decay_norm_and_bias and (pname == "bias" or isinstance(module, _NORMS)):
                kind = "no_decay"
            else:
                kind = "weights"
            groups[kind].append(p)
    return [{"params": ps, "lr": lr, "weight_decay": decays[k], "name": k} for k, ps in groups.items() if ps]
