"""Where the built-in models take channel gates, and the widths that rebuild them shrunk.

Every built-in model has an ``nn.Identity`` slot after each gateable layer (SPEC 3 placement)
and lists them with ``gate_sites()``. ``sparsify(model, "dep_l0" | "l0_hc")`` puts a ChannelGate
in each slot; ``finalize`` folds the gates, removes closed channels and rebuilds the model with
``widths`` (one int per site) so the shrunk model is the same plain class.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateSite:
    """slot: the Identity a gate replaces; layer: the Linear/Conv2d whose outputs it gates;
    norm: the BatchNorm between them (the gate folds into it, else into ``layer``);
    consumers: the layers reading these channels (their inputs shrink with them);
    index_buffers: LongTensor buffers that hold the kept channel indices after shrinking
    (a gated stem feeding a residual stream that keeps its full width)."""
    slot: str
    layer: str
    norm: str | None = None
    consumers: tuple[str, ...] = ()
    index_buffers: tuple[str, ...] = field(default=())


def check_widths(name: str, widths, defaults: list[int]) -> list[int]:
    """``widths`` (None: ``defaults``) as a list of positive ints, one per gate site."""
    if widths is None:
        return list(defaults)
    ok = isinstance(widths, (list, tuple)) and len(widths) == len(defaults) and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    if not ok:
        raise ValueError(f"build_model: widths for {name} must be {len(defaults)} positive ints "
                         f"(one per gate site), got {widths!r}")
    return list(widths)
