"""`sparsekern prune` under torchrun with 2 CPU processes (DDP, gloo) vs one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from sparsekern.pruning.train.loop import PruneConfig, run_prune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(method="str", model="lenet300", data="digits", epochs=6, target_sparsity=0.9, seed=5,
                batch_size=64, lr=0.05)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_two_process_str_run_matches_single_process(tmp_path):
    ddp_out = tmp_path / "ddp"
    args = ["--method", "str", "--target-sparsity", "0.9", "--model", "lenet300", "--data", "digits",
            "--epochs", "6", "--seed", "5", "--batch-size", "64", "--lr", "0.05", "--no-progress",
            "--checkpoint-every", "10"]  # mid-epoch checkpoints reduce across ranks and change nothing
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "sparsekern", "prune", "--out", str(ddp_out)] + args,
        env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 reports
    ddp = json.loads((ddp_out / "summary.json").read_text())
    assert ddp["world_size"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ddp"]  # no rank wrote elsewhere (e.g. into the cwd)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_prune(PruneConfig(out=str(tmp_path / "single"), progress=False, **SETTINGS))
    finally:
        torch.set_num_threads(threads)
    assert single["world_size"] == 1
    # Same global batches and an exactly rescaled loss: only float summation order differs.
    assert abs(ddp["sparsity"] - single["sparsity"]) < 0.01
    assert abs(ddp["sparsity"] - 0.9) < 0.01
    assert abs(ddp["accuracy"] - single["accuracy"]) < 0.03
    assert ddp["accuracy"] > 0.6  # 6 epochs to 90% sparsity: well above chance (0.1)
    history = [json.loads(line) for line in (ddp_out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [23 * e for e in range(1, 7)]  # 1438 examples / 64 per global batch
