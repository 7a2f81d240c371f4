"""What the trainer minimises and counts, by the data's task: classification (images or token
sequences: cross entropy over the logits) or causal LM (next-token cross entropy, summed over the
positions; accuracy is next-token accuracy, perplexity exp of the mean loss).

Every count is a sum over *units* (examples, or predicted tokens for causal LM) so the loop can
divide by the global batch's units and the gradient stays that of the global mean under DDP.
A model may return a Hugging Face output object: its ``.logits`` are used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def logits_of(output) -> Tensor:
    return output.logits if hasattr(output, "logits") else output


class Classification:
    task = "classification"

    def units(self, y: Tensor) -> int:
        return len(y)

    def global_units(self, global_batch: int, y: Tensor) -> int:
        return global_batch

    def loss_sum(self, output, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(logits_of(output).float(), y, reduction="sum", label_smoothing=label_smoothing)

    def correct(self, output, y: Tensor) -> Tensor:
        return (logits_of(output).argmax(-1) == y).sum()


class CausalLM:
    """Position t predicts token t+1: T-1 units per sequence (``y`` is the sequence itself)."""

    task = "causal_lm"

    def units(self, y: Tensor) -> int:
        return y.shape[0] * (y.shape[1] - 1)

    def global_units(self, global_batch: int, y: Tensor) -> int:
        return global_batch * (y.shape[1] - 1)

    @staticmethod
    def _shifted(output, y: Tensor):
        logits = logits_of(output)[:, :-1]
        return logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1)

    def loss_sum(self, output, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
        logits, targets = self._shifted(output, y)
        return F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)

    def correct(self, output, y: Tensor) -> Tensor:
        logits, targets = self._shifted(output, y)
        return (logits.argmax(-1) == targets).sum()


def objective_for(info: dict):
    """The objective of a dataset's ``info`` (image sets and token classification: ``Classification``)."""
    return CausalLM() if info.get("task") == "causal_lm" else Classification()


@torch.no_grad()
def perplexity(mean_loss: float) -> float:
    return float(torch.tensor(mean_loss, dtype=torch.float64).exp())
