"""Dense or CSR, per layer, by timing both at export.

Each Linear/Conv2d of the finalized model is run on the input it sees in the model (captured with a
forward hook on an example batch) as it is and as a CSR layer (``sparsekern.nn.csr``). A CSR layer is
considered only if its output matches the dense one (float tolerance); the two are timed round-robin
(one block of calls each, per round) and CSR is kept when its median is lower by more than MARGIN.
The timings and the choice go into the export's metadata: the answer depends on the machine and batch.
"""
from __future__ import annotations

import copy
import math
import statistics
import time

import torch
from torch import Tensor, nn

from sparsekern.nn.csr import CSRConv2d, CSRLinear

MIN_BLOCK_S = 1e-3  # calls per timed block: enough that the clock's resolution does not matter
MARGIN = 0.9  # CSR must beat dense by 10%: a closer race is timing noise, and dense is the simpler layer


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
                                        and not isinstance(m.padding, str))}


def layer_inputs(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    """The input each candidate layer receives when ``model`` runs on ``example``."""
    seen: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, m in _candidates(model).items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _block(fn, x: Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls


def time_pair(dense: nn.Module, sparse: nn.Module, x: Tensor, rounds: int) -> tuple[float, float]:
    """Median seconds per call of each, timed round-robin in blocks of the same number of calls."""
    with torch.no_grad():
        first = _block(dense, x, 1) + _block(sparse, x, 1)  # also warms both up
        calls = max(1, math.ceil(MIN_BLOCK_S / max(first / 2, 1e-7)))
        d, s = [], []
        for _ in range(rounds):
            d.append(_block(dense, x, calls))
            s.append(_block(sparse, x, calls))
    return statistics.median(d), statistics.median(s)


def _close(a: Tensor, b: Tensor) -> bool:
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))


def choose_formats(model: nn.Module, example: Tensor, rounds: int = 11,
                   margin: float | None = None) -> tuple[nn.Module, dict[str, dict]]:
    """A copy of ``model`` with each layer in its faster correct format, and per layer
    ``{format: dense|csr, dense_us, csr_us, density, checked}`` (the record the export keeps).
    ``margin``: CSR is kept when its time < margin * dense time (default MARGIN; inf: every correct layer)."""
    margin = MARGIN if margin is None else margin
    out = copy.deepcopy(model).eval()
    inputs = layer_inputs(out, example)
    records: dict[str, dict] = {}
    for name, layer in _candidates(out).items():
        if name not in inputs:  # not reached by this model's forward
            continue
        x = inputs[name]
        csr = (CSRLinear if isinstance(layer, nn.Linear) else CSRConv2d).from_dense(layer)
        with torch.no_grad():
            correct = _close(csr(x), layer(x))
        dense_s, csr_s = time_pair(layer, csr, x, rounds) if correct else (float("nan"), float("nan"))
        use_csr = correct and csr_s < margin * dense_s
        records[name] = {"format": "csr" if use_csr else "dense", "dense_us": round(dense_s * 1e6, 2),
                         "csr_us": round(csr_s * 1e6, 2), "density": round(csr.nnz / layer.weight.numel(), 6),
                         "checked": correct}
        if use_csr:
            parent, _, key = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, key, csr)
    return out, records


def apply_formats(model: nn.Module, records: dict[str, dict]) -> nn.Module:
    """``model`` (plain, as built) with the layers ``records`` mark ``csr`` replaced by empty CSR layers of
    the same geometry, ready for ``load_state_dict`` of a sparse export."""
    candidates = _candidates(model)
    for name, rec in records.items():
        if not isinstance(rec, dict) or rec.get("format") not in ("csr", "dense"):
            raise ValueError(f"layer record {name!r} has no format csr|dense")
        if rec["format"] != "csr":
            continue
        if name not in candidates:
            raise ValueError(f"layer {name!r} is not a Linear/Conv2d of this architecture")
        layer = candidates[name]
        if isinstance(layer, nn.Linear):
            csr = CSRLinear(layer.in_features, layer.out_features, has_bias=layer.bias is not None)
        else:
            csr = CSRConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, has_bias=layer.bias is not None)
        parent, _, key = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, key, csr)
    return model
