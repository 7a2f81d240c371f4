"""Checks that stop or flag a run that went wrong: a non-finite loss stops it (the last good
checkpoint is kept)."""
from __future__ import annotations

import math

from sparsekern.pruning.train.config import PruneConfig


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


def check_finite(loss: float, epoch: int, step: int, config: PruneConfig) -> None:
    if not math.isfinite(loss):
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {config.out!r}" if epoch
                else "no checkpoint was written")
        raise TrainingDiverged(f"training loss became {loss} in epoch {epoch + 1} (step {step + 1}); "
                               f"lower --lr or check the data; {kept}")
