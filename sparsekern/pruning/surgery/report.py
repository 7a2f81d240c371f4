"""``sparsity_report``: per-layer weights, non-zeros and FLOPs of a (sparse) model."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsekern.nn import L0_LAYERS, ChannelGate, SparseModule
from sparsekern.nn.conv1d import is_conv1d
from sparsekern.pruning.surgery.flops import TraceEvent, trace
from sparsekern.pruning.surgery.left_dense import left_dense


def _channel_masks(events: list[TraceEvent]) -> dict[int, dict[str, Tensor]]:
    """Kept output/input channels per layer (by event index) implied by structured gates.

    A ChannelGate's closed channels remove the matching outputs of the layer run just before
    it and the matching inputs of the layer run just after; an ``out``-gated L0 layer's closed
    units remove the matching inputs of the next layer, an ``in``-gated one's closed inputs
    the matching outputs of the layer before. Sizes must match (or the next layer's
    inputs be a multiple, as after a Flatten), otherwise the gate is ignored for FLOPs.
    """
    masks: dict[int, dict[str, Tensor]] = {}
    layer_idx = [i for i, e in enumerate(events) if not isinstance(e.module, ChannelGate)]

    def restrict(i: int, side: str, kept: Tensor) -> None:
        if is_conv1d(events[i].module):  # [in, out] weights: its gates are in its own weight
            return
        w = events[i].module.weight
        dim = 0 if side == "out" else 1
        size = w.shape[dim]
        if side == "in" and getattr(events[i].module, "groups", 1) != 1:
            return
        if size % kept.numel():
            return
        kept = kept.to(w.device).repeat_interleave(size // kept.numel())
        old = masks.setdefault(i, {}).get(side)
        masks[i][side] = kept if old is None else old & kept

    for i, e in enumerate(events):
        m = e.module
        if is_conv1d(m):  # HF Conv1D ([in, out] weights, transformer blocks): its zeros are counted as they are
            continue
        before = [j for j in layer_idx if j < i]
        if isinstance(m, L0_LAYERS) and m.granularity == "in":
            if before and events[before[-1]].module.weight.shape[0] == m.weight.shape[1]:
                restrict(before[-1], "out", m.kept())
            continue
        if isinstance(m, ChannelGate):
            kept = m.kept()
            if before and events[before[-1]].module.weight.shape[0] == kept.numel():
                restrict(before[-1], "out", kept)
        elif isinstance(m, L0_LAYERS) and m.granularity == "out":
            kept = m.kept()
        else:
            continue
        after = [j for j in layer_idx if j > i]
        if after:
            restrict(after[0], "in", kept)
    return masks


def _kept_nonzeros(weight: Tensor, kept: dict[str, Tensor]) -> int:
    nz = weight != 0
    if "out" in kept:
        nz = nz & kept["out"].reshape((-1,) + (1,) * (nz.dim() - 1))
    if "in" in kept:
        nz = nz & kept["in"].reshape((1, -1) + (1,) * (nz.dim() - 2))
    return int(nz.sum().item())


def sparsity_report(model: nn.Module, example_input, *, count_closed_channels: bool = False) -> dict:
    """Per Linear/Conv2d layer (in forward order) and in total: ``params`` (weights, biases
    excluded), ``nonzeros`` (of the eval-mode effective weight), ``sparsity``, ``dense_flops``
    and ``effective_flops`` (multiply-accumulates per example, see ``pruning.flops``).
    effective = dense * (non-zero weights that still meet a kept input and output channel) /
    params: the density, restricted to the channels left by structured gates. A layer called
    several times is counted every time for FLOPs.
    ``count_closed_channels``: ``nonzeros`` also leaves out the weights of channels closed by
    structured gates (what ``shrink_model`` removes), so a structured model's rows show what it
    prunes against the original widths; off, they count zero weights only (a channel gate zeroes
    no weight).
    Returns ``{"layers": [row, ...], "total": row, "left_dense": [...]}``; each row also has
    ``name``, ``type``, ``sparse`` (a sparsekern layer?). ``left_dense``: the modules with
    parameters a sparsified model kept dense, each with its ``reason`` (tied weights,
    embeddings, norms, layers not selected; see ``left_dense.left_dense``).
    """
    events = trace(model, example_input)
    masks = _channel_masks(events)
    rows: dict[str, dict] = {}
    with torch.no_grad():
        for i, e in enumerate(events):
            m = e.module
            if isinstance(m, ChannelGate):
                continue
            weight = m.effective_weight() if isinstance(m, SparseModule) else m.weight
            density = _kept_nonzeros(weight, masks.get(i, {})) / weight.numel()
            row = rows.get(e.name)
            if row is None:
                nonzeros = (_kept_nonzeros(weight, masks.get(i, {})) if count_closed_channels
                            else int((weight != 0).sum().item()))
                row = rows[e.name] = {
                    "name": e.name, "type": type(m).__name__, "sparse": isinstance(m, SparseModule),
                    "params": weight.numel(), "nonzeros": nonzeros, "sparsity": 1 - nonzeros / weight.numel(),
                    "dense_flops": 0.0, "effective_flops": 0.0}
            row["dense_flops"] += e.dense_flops
            row["effective_flops"] += e.dense_flops * density
    layers = list(rows.values())
    params = sum(r["params"] for r in layers)
    nonzeros = sum(r["nonzeros"] for r in layers)
    dense = sum(r["dense_flops"] for r in layers)
    effective = sum(r["effective_flops"] for r in layers)
    total = {"name": "total", "type": "", "sparse": any(r["sparse"] for r in layers), "params": params,
             "nonzeros": nonzeros, "sparsity": 1 - nonzeros / params if params else 0.0,
             "dense_flops": dense, "effective_flops": effective,
             "flops_reduction": dense / effective if effective else float("inf")}
    return {"layers": layers, "total": total, "left_dense": left_dense(model)}


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_report(report: dict) -> str:
    """The report as a fixed-width table (one line per layer, then the totals)."""
    if not isinstance(report, dict) or "layers" not in report or "total" not in report:
        raise TypeError("format_report: expected the dict returned by sparsity_report")
    header = ("layer", "type", "params", "nonzeros", "sparsity", "dense FLOPs", "eff. FLOPs")
    lines = [(r["name"], r["type"], str(r["params"]), str(r["nonzeros"]), f"{100 * r['sparsity']:.2f}%",
              _human(r["dense_flops"]), _human(r["effective_flops"])) for r in report["layers"] + [report["total"]]]
    widths = [max(len(header[k]), *(len(line[k]) for line in lines)) for k in range(len(header))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    out = [fmt(header), rule] + [fmt(line) for line in lines[:-1]] + [rule, fmt(lines[-1])]
    t = report["total"]
    for r in report.get("left_dense", []):
        out.append(f"left dense: {r['name'] or '(model)'} ({r['type']}, {r['params']} params): {r['reason']}")
    if t.get("effective_flops"):
        out.append(f"FLOPs reduction: {t['flops_reduction']:.2f}x (FLOPs = multiply-accumulates per example)")
    return "\n".join(out)
