"""DDP without the per-step buffer broadcast (issue 18, defect 13), 2 CPU processes with gloo.

DDP's default broadcast wrote every noise_state before each forward, which made every gated
layer read its counter back (a host sync per layer and step on CUDA). Checked here: the counter
is written only by the layer itself, all ranks keep rank 0's stream, and sync_buffers gives
every rank rank 0's BatchNorm statistics.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _worker(rank: int, world: int, init: str, out: str) -> None:
    from sparsekern import nn as snn
    from sparsekern.pruning.train.distributed import Distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different models per rank: DDP's constructor must make them rank 0's
        gate = snn.L0Linear(6, 4, granularity="weight")
        model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), gate).train()
        d = Distributed("cpu")
        net = d.wrap(model, torch.device("cpu"))
        assert net.broadcast_buffers is False
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        versions = []
        for _ in range(4):
            before = gate.noise_state._version
            loss = net(torch.randn(8, 5, generator=gen)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            versions.append(gate.noise_state._version - before)
        state = gate.noise_state.clone()
        bn_before = model[1].running_mean.clone()
        d.sync_buffers(model)
        torch.save({"versions": versions, "state": state, "bn_before": bn_before,
                    "bn_after": model[1].running_mean.clone(), "weight": gate.weight.detach().clone()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_keeps_the_noise_stream_without_a_buffer_broadcast(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # one write per step, the layer's own advance: the host copy of (seed, offset) stays valid,
    # so no step reads the counter back (with broadcast_buffers=True every step wrote it twice)
    assert r0["versions"] == [1] * 4 and r1["versions"] == [1] * 4
    assert torch.equal(r0["state"], r1["state"])  # rank 0's seed, advanced alike: rank 0's stream
    assert torch.equal(r0["weight"], r1["weight"])
    assert not torch.equal(r0["bn_before"], r1["bn_before"])  # each rank's statistics from its own data
    assert torch.equal(r1["bn_after"], r0["bn_before"]) and torch.equal(r0["bn_after"], r0["bn_before"])
