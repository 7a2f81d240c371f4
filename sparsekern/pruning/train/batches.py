"""Where the trainer's batches come from: one index plan per epoch, served from in-memory
tensors or through a DataLoader (workers, pinned memory) for datasets read from disk.

The plan of epoch ``e`` is a permutation seeded by (seed, e), cut into global batches; rank r
of a distributed run takes ``batch[r::world]`` of each (what DistributedSampler does, but per
global batch, so the averaged gradient equals the single-process one exactly). A run resumed
in the middle of an epoch starts the plan at the next batch: nothing is read twice.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset


def _mix(seed: int, n: int) -> int:
    """One generator seed from (seed, n), in the 64 bits manual_seed takes (the same value as before
    for every seed whose product fitted; large seeds wrap instead of overflowing)."""
    return (seed * 1_000_003 + n) % 2**64


def epoch_plan(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list:
    """``[(this rank's index tensor, global batch size)]`` for every global batch of ``epoch``."""
    g = torch.Generator().manual_seed(_mix(seed, epoch))
    order = torch.randperm(n, generator=g)
    plan = []
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < world:  # every rank needs at least one example
            break
        plan.append((batch[rank::world], len(batch)))
    return plan


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    return sum(1 for start in range(0, n, batch_size) if min(batch_size, n - start) >= world)


class _PlanSampler(Sampler):
    """A DataLoader batch_sampler that serves a fixed list of index batches."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return (idx.tolist() for idx in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchSource:
    """Training and evaluation batches of a dataset on ``device``."""

    def __init__(self, device: torch.device, *, workers: int = 0, channels_last: bool = False, seed: int = 0):
        self.device, self.workers, self.channels_last, self.seed = device, workers, channels_last, seed

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _serve(self, ds, batches: list, tag: int):
        """(x, y) of each index batch, from memory or through a DataLoader."""
        if isinstance(ds, TensorDataset):
            x_all, y_all = ds.tensors
            for idx in batches:
                yield self._to_device(x_all[idx], y_all[idx])
            return
        # Workers draw their augmentation from seeds of this generator: reproducible per (seed, tag).
        loader = DataLoader(ds, batch_sampler=_PlanSampler(batches), num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(_mix(self.seed, tag)))
        for x, y in loader:
            yield self._to_device(x, y)

    def train(self, ds, plan: list, epoch: int, start: int = 0):
        """``(x, y, global batch size)`` for the plan's batches from ``start`` on."""
        rest = plan[start:]
        for (x, y), (_, global_batch) in zip(self._serve(ds, [idx for idx, _ in rest], epoch * 1_000_003 + start),
                                             rest):
            yield x, y, global_batch

    def evaluate(self, ds, rank: int, world: int, batch_size: int = 512):
        """This rank's share of ``ds`` (every world-th example), in order."""
        mine = torch.arange(rank, len(ds), world)
        yield from self._serve(ds, [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)], 1 << 40)
