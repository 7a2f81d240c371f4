"""FSDP2 (``--fsdp``): 2 gloo ranks vs one process, distributed checkpoints killed, resumed and
resharded (2 ranks -> 1 and -> 2), a full disk during a save, torch.compile on the sharded model."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from sparsekern.pruning.train.loop import PruneConfig, run_prune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "fsdp_worker.py")
SETTINGS = dict(method="str", model="lenet300", data="digits", epochs=2, target_sparsity=0.8, seed=3,
                batch_size=64, lr=0.05)
STEPS = 23  # 1438 digits / 64 per global batch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _torchrun(args: list[str], cwd, nproc: int = 2, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc)] + args, env=_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd))


def _rows(stdout: str) -> list[tuple[int, str, dict]]:
    return [(int(p[1]), f"{p[2]} {p[3]}", json.loads(p[4])) for line in stdout.splitlines()
            if line.startswith("ROW ") for p in [line.split(" ", 4)]]


@pytest.fixture
def one_process_group():
    """run_prune(fsdp=True) in this process makes its own one-rank group; none may be left behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert not dist.is_initialized()


def _weights(run_dir) -> dict:
    return torch.load(os.path.join(run_dir, "model.pt"), weights_only=True)


def _assert_same_run(summary: dict, reference: dict, run_dir, reference_dir) -> None:
    """Same global batches, exactly rescaled losses: only float summation order differs."""
    assert abs(summary["sparsity"] - reference["sparsity"]) < 1e-3
    assert abs(summary["accuracy"] - reference["accuracy"]) < 0.01
    assert summary["flops"] == pytest.approx(reference["flops"], rel=1e-3)
    mine, theirs = _weights(run_dir), _weights(reference_dir)
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], atol=2e-4, rtol=1e-3, msg=k)
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    ref_log = [json.loads(line) for line in open(os.path.join(reference_dir, "log.jsonl"))]
    assert [r["step"] for r in log] == [r["step"] for r in ref_log]
    for r, q in zip(log, ref_log):
        assert r["train_loss"] == pytest.approx(q["train_loss"], rel=1e-4)


def test_two_ranks_killed_then_resumed_on_one_and_on_two_ranks(tmp_path, one_process_group):
    reference = run_prune(PruneConfig(out=str(tmp_path / "single"), progress=False, **SETTINGS))

    # 2 ranks, sharded, killed right after the first epoch's checkpoint
    killed = tmp_path / "killed"
    spec = {"runs": [{**SETTINGS, "fsdp": True, "out": str(killed), "checkpoint_every": 10, "kill_after_epoch": 1}]}
    proc = _torchrun([WORKER, json.dumps(spec)], tmp_path)
    assert proc.returncode != 0 and "exitcode  : 17" in proc.stderr, proc.stderr[-3000:]  # the kill, no error
    rows = _rows(proc.stdout)
    assert sorted(r for r, _, _ in rows) == [0, 1]
    assert rows[0][2]["sparsity"] == rows[1][2]["sparsity"]  # every rank took the same pruning decisions
    assert rows[0][2]["train_loss"] == pytest.approx(json.loads(
        (tmp_path / "single" / "log.jsonl").read_text().splitlines()[0])["train_loss"], rel=1e-4)
    assert sorted(os.listdir(killed / "checkpoint.dcp")) == [f"step-{STEPS:09d}"]  # the last complete one only
    saved = sorted(os.listdir(killed / "checkpoint.dcp" / f"step-{STEPS:09d}"))
    assert saved == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]  # each rank wrote its part
    assert not (killed / "summary.json").exists()
    again = tmp_path / "again"
    shutil.copytree(killed, again)
    # a save killed half-way leaves a temporary directory: ignored, then cleaned up
    partial = killed / "checkpoint.dcp" / f".step-{2 * STEPS:09d}.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")

    # resumed on 1 rank (this process)
    one = run_prune(PruneConfig(out=str(killed), progress=False, fsdp=True, resume=True, **SETTINGS))
    assert one["world_size"] == 1
    _assert_same_run(one, reference, killed, tmp_path / "single")
    assert sorted(os.listdir(killed / "checkpoint.dcp")) == [f"step-{2 * STEPS:09d}"]

    # resumed on 2 ranks, through the command line
    args = ["--method", "str", "--target-sparsity", "0.8", "--model", "lenet300", "--data", "digits", "--epochs", "2",
            "--seed", "3", "--batch-size", "64", "--lr", "0.05", "--no-progress", "--fsdp", "--resume"]
    proc = _torchrun(["-m", "sparsekern", "prune", "--out", str(again)] + args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 reports
    two = json.loads((again / "summary.json").read_text())
    assert two["world_size"] == 2
    _assert_same_run(two, reference, again, tmp_path / "single")


@pytest.mark.slow
def test_four_ranks_killed_then_resharded_onto_two(tmp_path, one_process_group):
    """Saved by 4 ranks (4 shard files), resumed by 2: the run ends as the uninterrupted single-process one."""
    reference = run_prune(PruneConfig(out=str(tmp_path / "single"), progress=False, **SETTINGS))
    killed = tmp_path / "killed4"
    spec = {"runs": [{**SETTINGS, "fsdp": True, "out": str(killed), "kill_after_epoch": 1}]}
    proc = _torchrun([WORKER, json.dumps(spec)], tmp_path, nproc=4)
    assert proc.returncode != 0 and "exitcode  : 17" in proc.stderr, proc.stderr[-3000:]  # the kill, no error
    rows = _rows(proc.stdout)
    assert sorted(r for r, _, _ in rows) == [0, 1, 2, 3] and len({r[2]["sparsity"] for r in rows}) == 1
    saved = sorted(os.listdir(killed / "checkpoint.dcp" / f"step-{STEPS:09d}"))
    assert saved == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp", "state.pt"]
    args = ["--method", "str", "--target-sparsity", "0.8", "--model", "lenet300", "--data", "digits", "--epochs", "2",
            "--seed", "3", "--batch-size", "64", "--lr", "0.05", "--no-progress", "--fsdp", "--resume"]
    proc = _torchrun(["-m", "sparsekern", "prune", "--out", str(killed)] + args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((killed / "summary.json").read_text())
    assert two["world_size"] == 2
    _assert_same_run(two, reference, killed, tmp_path / "single")


def test_full_disk_during_a_sharded_save_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys, one_process_group):
    from torch.distributed.checkpoint import FileSystemWriter

    from sparsekern.cli import main

    write_data = FileSystemWriter.write_data
    calls = []

    def full_disk(self, plan, planner):
        calls.append(1)
        if len(calls) >= 2:  # the first epoch's checkpoint is written, the second's is not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_data(self, plan, planner)

    monkeypatch.setattr(FileSystemWriter, "write_data", full_disk)
    out = tmp_path / "run"
    args = ["prune", "--method", "gmp", "--target-sparsity", "0.5", "--epochs", "2", "--seed", "1", "--no-progress",
            "--fsdp", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sparsekern: error: cannot write the distributed checkpoint")
    assert "No space left on device" in err and f"step-{STEPS:09d}" in err and "is kept" in err
    assert err.endswith("free some space, then run the same command with --resume")  # as for checkpoint.pt
    assert os.listdir(out / "checkpoint.dcp") == [f"step-{STEPS:09d}"]  # no temporary directory left
    monkeypatch.setattr(FileSystemWriter, "write_data", write_data)
    summary = run_prune(PruneConfig(method="gmp", target_sparsity=0.5, epochs=2, seed=1, progress=False, fsdp=True,
                                    resume=True, out=str(out)))
    assert abs(summary["sparsity"] - 0.5) < 0.01


def test_resume_needs_the_same_kind_of_checkpoint(tmp_path, one_process_group):
    fast = dict(model="lenet300", data="synthetic", epochs=1, progress=False)
    run_prune(PruneConfig(out=str(tmp_path / "sharded"), fsdp=True, **fast))
    with pytest.raises(ValueError, match="was sharded .resume it with --fsdp"):
        run_prune(PruneConfig(out=str(tmp_path / "sharded"), resume=True, **fast))
    with pytest.raises(ValueError, match="already holds a run"):
        run_prune(PruneConfig(out=str(tmp_path / "sharded"), fsdp=True, **fast))
    run_prune(PruneConfig(out=str(tmp_path / "plain"), **fast))
    with pytest.raises(ValueError, match="was not sharded"):
        run_prune(PruneConfig(out=str(tmp_path / "plain"), fsdp=True, resume=True, **fast))
    with pytest.raises(ValueError, match="fp16"):
        PruneConfig(fsdp=True, amp="fp16").validate()


def test_checkpoint_metadata_is_not_unpickled_freely(tmp_path, one_process_group):
    """DCP itself would pickle.load a run's .metadata: a crafted one must not run code."""
    from sparsekern.pruning.train.checkpoint import CheckpointError

    out = tmp_path / "run"
    fast = dict(model="lenet300", data="synthetic", epochs=1, progress=False, fsdp=True)
    run_prune(PruneConfig(out=str(out), **fast))
    (ckpt,) = (out / "checkpoint.dcp").iterdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (ckpt / ".metadata").write_bytes(pickle.dumps(Evil()))
    os.remove(out / "summary.json")  # so the resume loads the checkpoint instead of reporting the finished run
    with pytest.raises(CheckpointError, match="not allowed in checkpoint metadata"):
        run_prune(PruneConfig(out=str(out), resume=True, **fast))
    assert not marker.exists()


def test_shard_model_and_full_parameters(one_process_group):
    from torch.distributed.tensor import DTensor

    from sparsekern.models import build_model
    from sparsekern.pruning import sparsify
    from sparsekern.pruning.train.fsdp import full_parameters, shard_model

    model = sparsify(build_model("lenet300", 10, 1, 8), "str")
    with pytest.raises(RuntimeError, match="not initialised"):
        shard_model(model)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_model(model)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        assert not any(isinstance(b, DTensor) for b in model.buffers())  # noise_state etc. are not sharded
        with pytest.raises(ValueError, match="already sharded"):
            shard_model(model)
        layer = model.fc1
        before = layer.s.full_tensor().clone()
        with full_parameters(model):
            assert type(layer.s) is torch.Tensor and type(layer.weight) is torch.Tensor
            with torch.no_grad():
                layer.s.add_(1.0)  # a controller's edit reaches the shard
        assert isinstance(layer.s, DTensor)
        torch.testing.assert_close(layer.s.full_tensor(), before + 1.0)
        with full_parameters(model):  # a penalty computed on the full tensors trains the shards
            loss = layer.s.sum() * 3.0
        loss.backward()
        torch.testing.assert_close(layer.s.grad.full_tensor(), torch.full_like(before, 3.0))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_sharded_model(backend, one_process_group):
    """torch.compile through FSDP2's hooks and our custom ops: same outputs and gradients as eager."""
    from sparsekern.models import build_model
    from sparsekern.pruning import sparsify
    from sparsekern.pruning.train.fsdp import shard_model

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = shard_model(sparsify(build_model("lenet300", 10, 1, 8), "str"))
        x = torch.randn(8, 1, 8, 8)
        eager = model(x)
        eager.sum().backward()
        grads = [p.grad.full_tensor().clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        compiled = torch.compile(model, backend=backend)(x)
        compiled.sum().backward()
        torch.testing.assert_close(compiled, eager)
        for p, g in zip(model.parameters(), grads):
            torch.testing.assert_close(p.grad.full_tensor(), g)
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()


METHOD_SETTINGS = {
    "dense": {}, "gmp": {"target_sparsity": 0.8}, "str": {"target_sparsity": 0.8}, "l0": {"target_sparsity": 0.5},
    "l0_hc": {"target_flops": 0.5}, "dep_l0": {"target_flops": 0.5},
}


@pytest.mark.slow
def test_every_method_on_two_ranks(tmp_path, one_process_group):
    """FSDP vs DDP on the same 2 ranks (same gate noise: every rank draws the stream of one
    process) and, for the methods whose noise does not depend on the batch, vs one process."""
    runs = []
    for method, extra in METHOD_SETTINGS.items():
        for fsdp in (True, False):
            runs.append({"method": method, "model": "lenet300", "data": "digits", "epochs": 1, "seed": 2,
                         "fsdp": fsdp, "out": str(tmp_path / f"{method}-{int(fsdp)}"), **extra})
    proc = _torchrun([WORKER, json.dumps({"runs": runs})], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {" ".join(line.split(" ", 3)[1:3]): json.loads(line.split(" ", 3)[3])
                 for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")}
    rows = _rows(proc.stdout)
    for method, extra in METHOD_SETTINGS.items():
        fsdp, ddp = summaries[f"{method} 1"], summaries[f"{method} 0"]
        assert len({r["sparsity"] for rank, tag, r in rows if tag == f"{method} 1"}) == 1  # ranks agree
        for key in ("sparsity", "flops", "accuracy"):
            assert fsdp[key] == pytest.approx(ddp[key], abs=2e-3), (method, key)
        if method in ("dense", "gmp", "str", "l0"):
            single = run_prune(PruneConfig(method=method, model="lenet300", data="digits", epochs=1, seed=2,
                                           progress=False, out=str(tmp_path / f"{method}-single"), **extra))
            _assert_same_run(fsdp, single, tmp_path / f"{method}-1", tmp_path / f"{method}-single")


def test_a_step_moved_aside_is_used_only_when_alone(tmp_path):
    """Saving a step again moves the old directory aside (``.old``) until the new one is in place; a
    crash in between leaves only the ``.old``, which resume must still find."""
    from sparsekern.pruning.train.sharded_checkpoint import STATE_FILE, checkpoint_root, latest_checkpoint

    root = checkpoint_root(str(tmp_path))
    for name in ("step-000000005.old", "step-000000003"):
        os.makedirs(os.path.join(root, name))
        open(os.path.join(root, name, STATE_FILE), "wb").close()
    assert latest_checkpoint(str(tmp_path)) == os.path.join(root, "step-000000005.old")
    os.makedirs(os.path.join(root, "step-000000005"))
    assert latest_checkpoint(str(tmp_path)) == os.path.join(root, "step-000000005.old")  # incomplete: no state
    open(os.path.join(root, "step-000000005", STATE_FILE), "wb").close()
    assert latest_checkpoint(str(tmp_path)) == os.path.join(root, "step-000000005")
