"""Per-layer FLOPs of the Linear/Conv2d layers of a (finalized) model.

FLOPs are multiply-adds per example, the convention of the STR paper (ResNet-50:
4.1 GFLOPs); a layer's sparse FLOPs are its dense FLOPs times its weight density.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def layer_flops(model: nn.Module, example_input: torch.Tensor) -> list[dict]:
    """One row per Linear/Conv2d: name, params, nonzero, sparsity, dense_flops, flops (for one example)."""
    rows, hooks = [], []

    def hook(name):
        def record(module, inputs, output):
            per_example_outputs = output[0].numel() if output.dim() > 1 else output.numel()
            if isinstance(module, nn.Conv2d):
                macs_per_output = module.weight[0].numel()  # in_channels / groups * kh * kw
            else:
                macs_per_output = module.in_features
            dense = per_example_outputs * macs_per_output
            params = module.weight.numel()
            nonzero = int(torch.count_nonzero(module.weight))
            rows.append({"name": name, "params": params, "nonzero": nonzero,
                         "sparsity": 1.0 - nonzero / params,
                         "dense_flops": int(dense), "flops": int(round(dense * nonzero / params))})
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows
