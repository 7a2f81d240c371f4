"""The process group and device of a run: one process, or one rank of ``torchrun`` (DDP or FSDP2)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn



class Distributed:
    """Rank/world of this process; initialises a process group under torchrun. ``fsdp``: always a
    group (FSDP2 and distributed checkpoints need one), a one-process group outside torchrun."""

    def __init__(self, device_type: str, fsdp: bool = False):
        self.owns_group = False
        backend = "nccl" if device_type == "cuda" else "gloo"
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend)
            self.owns_group = True
        elif fsdp and not dist.is_initialized():
            if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:  # torchrun with one process
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self.owns_group = True
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel, without its per-step buffer broadcast.

        DDP's default (``broadcast_buffers=True``) copies every buffer from rank 0 before each
        forward. For a gated layer's ``noise_state`` that write invalidates the layer's host copy
        of (seed, offset), so every gated layer read the buffer back every step: a host sync per
        layer and step on CUDA, for nothing: every rank starts from rank 0's buffers (synced here
        once) and advances its counter by the same amount per step, so all ranks draw rank 0's
        stream (the same weight gates per step, as one process draws them).
        BatchNorm statistics are buffers too: rank 0's evolve from rank 0's batches either way
        (the broadcast only overwrote the others'), and ``sync_buffers`` gives every rank rank
        0's before each evaluation and checkpoint, where they are read.
        """
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        self.sync_buffers(model)  # without broadcast_buffers DDP's constructor syncs parameters only
        return net

    def sync_buffers(self, model: nn.Module) -> None:
        """Every buffer (BatchNorm statistics, noise counters) set to rank 0's, in one pass."""
        if not self.on:
            return
        buffers = [b for b in model.buffers() if b.numel()]
        if buffers:
            dist._broadcast_coalesced(dist.group.WORLD, buffers, 250 * 2**20, 0)

    def sum(self, values: list[float], device) -> list[float]:
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def check_agree(self, model: nn.Module, sparsity: float, device) -> None:
        """Raise if the ranks ended with different weights or pruning decisions (they must not)."""
        if not self.on:
            return
        with torch.no_grad():
            mine = torch.stack([torch.tensor(sparsity, dtype=torch.float64, device=device)] +
                               [p.detach().double().sum() for p in model.parameters()])
        low, high = mine.clone(), mine.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError("distributed ranks disagree on the trained weights or sparsity")

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {name!r}: not a device (use cpu, cuda, cuda:N or auto)") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: sparsekern trains on cpu or cuda (cuda:N), not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device
