"""``recalibrate_bn``: BatchNorm statistics of the model as it is evaluated.

Training collects running statistics under sampled gates (or moving STR thresholds), but
evaluation uses the deterministic gates, so the statistics do not match the eval network
(ResNet-20/digits, L0: test accuracy 0.13 before, 0.95 after). This recomputes them with every
other module in eval mode (deterministic gates, current thresholds, no dropout).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset


def _inputs(data, batch_size: int):
    if isinstance(data, TensorDataset):
        data = data.tensors[0]
    if isinstance(data, Tensor):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size]
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, batches: int = 20, *, batch_size: int = 256) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them as exact averages over the
    first ``batches`` batches of ``data`` (inputs tensor, TensorDataset, or iterable of batches /
    (x, y) pairs), with the rest of the model in eval mode. Modes are restored. Returns ``model``."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"recalibrate_bn: batches must be a positive int, got {batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = next(model.parameters()).device
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
            m.train()
        seen = 0
        for x in _inputs(data, batch_size):
            model(x.to(device))
            seen += 1
            if seen == batches:
                break
        if seen == 0:
            raise ValueError("recalibrate_bn: data gave no batches")
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return model
