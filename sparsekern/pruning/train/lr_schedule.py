"""The learning-rate schedule of a run, stepped once per training step."""
from __future__ import annotations

import math

import torch

from sparsekern.pruning.train.config import PruneConfig


def lr_scheduler(optimizer, config: PruneConfig, steps_per_epoch: int):
    """Per-step learning-rate schedule: linear warm-up, then cosine to 0, steps of 0.1 or constant."""
    total = steps_per_epoch * (config.epochs + config.finetune_epochs)
    warm = round(config.warmup_epochs * steps_per_epoch)
    if config.lr_schedule == "cosine" and not warm:  # the schedule runs have always used
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    milestones = [m * steps_per_epoch for m in config.lr_milestones]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if config.lr_schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
