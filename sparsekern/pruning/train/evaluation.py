"""Evaluation as the trainer does it: test accuracy (summed over ranks) in float32, as the exported
model is used (``amp=True``: under the run's autocast instead), BatchNorm statistics recalibrated
for the eval network first, with the EMA parameters if any."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from sparsekern.pruning.methods.base import has_batchnorm
from sparsekern.pruning.train.batches import BatchSource
from sparsekern.pruning.train.batchnorm import recalibrate_bn
from sparsekern.pruning.train.config import PruneConfig
from sparsekern.pruning.train.distributed import Distributed
from sparsekern.pruning.train.objective import Classification

RECALIBRATION_BATCHES = 20


def recalibrate(model: nn.Module, method, train_ds, config: PruneConfig, device) -> None:
    """BatchNorm statistics of the eval network (see ``batchnorm``), from the first training
    batches in a fixed order (no RNG drawn, so resumed runs stay identical)."""
    if not (method.has_gates_or_thresholds() and has_batchnorm(model)):
        return
    data = (train_ds.tensors[0] if hasattr(train_ds, "tensors")
            else torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size))
    recalibrate_bn(model, data, RECALIBRATION_BATCHES, batch_size=config.batch_size)


def evaluated(ema):
    """Evaluate with the EMA parameters when there is one."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


@torch.no_grad()
def accuracy(model: nn.Module, ds, source: BatchSource, d: Distributed, config: PruneConfig, *,
             amp: bool = False, objective=None) -> float:
    """Test accuracy; float32 unless ``amp`` (a bf16 run's autocast accuracy differed from its export's)."""
    return evaluate(model, ds, source, d, config, amp=amp, objective=objective)[0]


@torch.no_grad()
def evaluate(model: nn.Module, ds, source: BatchSource, d: Distributed, config: PruneConfig, *,
             amp: bool = False, objective=None) -> tuple[float, float]:
    """(accuracy, mean loss) over ``ds`` per the ``objective`` (default: classification); for causal
    LM both are per predicted token (next-token accuracy; exp(loss) is the perplexity)."""
    objective = objective or Classification()
    model.eval()
    correct = seen = loss = 0.0
    for x, y in source.evaluate(ds, d.rank, d.world):
        with autocast(config, x.device) if amp else contextlib.nullcontext():
            out = model(x)
        correct += float(objective.correct(out, y))
        loss += float(objective.loss_sum(out, y))
        seen += objective.units(y)
    total_correct, total_loss, total = d.sum([correct, loss, float(seen)], source.device)
    return total_correct / total, total_loss / total


def autocast(config: PruneConfig, device: torch.device):
    if config.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)
