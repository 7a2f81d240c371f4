"""GPU-scale training options on CPU-sized runs: mid-epoch resume, AMP, channels-last, LR schedules,
label smoothing, and torchvision image folders (when torchvision is installed)."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from sparsekern.cli import main
from sparsekern.pruning.train import loop as trainer
from sparsekern.pruning.train.checkpoint import load_checkpoint
from sparsekern.pruning.train.config import PruneConfig
from sparsekern.pruning.train.loop import run_prune
from sparsekern.pruning.train.lr_schedule import lr_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    import torchvision  # noqa: F401
    HAVE_TORCHVISION = True
except Exception:  # noqa: BLE001 - also a torchvision built for another torch (RuntimeError at import)
    HAVE_TORCHVISION = False


class _Killed(Exception):
    pass


def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    def config(out, resume=False):
        return PruneConfig(method="l0", model="lenet300", data="digits", epochs=2, seed=5, out=str(out),
                           resume=resume, progress=False, checkpoint_every=4)

    straight = run_prune(config(tmp_path / "straight"))
    real, calls = torch.nn.functional.cross_entropy, {"n": 0}

    def killed_at_step_31(*args, **kwargs):  # 23 steps per epoch: killed in epoch 2, after step 28's checkpoint
        calls["n"] += 1
        if calls["n"] == 31:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.F, "cross_entropy", killed_at_step_31)
    with pytest.raises(_Killed):
        run_prune(config(tmp_path / "killed"))
    monkeypatch.setattr(trainer.F, "cross_entropy", real)
    saved = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"], saved["position"]["batch"]) == (1, 28, 5)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    resumed = run_prune(config(tmp_path / "killed", resume=True))
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["accuracy"] == straight["accuracy"]
    rows = [json.loads(line) for line in open(tmp_path / "killed" / "log.jsonl")]
    want = [json.loads(line) for line in open(tmp_path / "straight" / "log.jsonl")]
    for r, w in zip(rows, want):  # the epoch's loss/accuracy sums survive the kill too
        assert r["train_loss"] == pytest.approx(w["train_loss"]) and r["train_acc"] == w["train_acc"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(tmp_path, amp):
    out = tmp_path / amp
    assert main(["prune", "--model", "lenet5", "--epochs", "2", "--amp", amp, "--channels-last", "--no-progress",
                 "--out", str(out)]) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["accuracy"] > 0.5  # chance 0.1; measured ~0.9
    state = load_checkpoint(out / "checkpoint.pt")
    assert bool(state["scaler"]) == (amp == "fp16")  # fp16 keeps its GradScaler's state


def test_amp_runs_report_the_float32_accuracy_of_their_export(tmp_path):
    """A bf16 run's summary held its autocast accuracy; the export reloaded in fp32 scored otherwise."""
    out = tmp_path / "bf16"
    summary = run_prune(PruneConfig(method="l0", model="lenet5", epochs=1, amp="bf16", seed=2, out=str(out),
                                    progress=False))
    from sparsekern.cli.export import finalized_architecture
    from sparsekern.data import load_dataset

    net = finalized_architecture(str(out))
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    net.eval()
    x, y = load_dataset("digits")[1].tensors
    with torch.no_grad():
        fp32 = (net(x).argmax(1) == y).double().mean().item()
    assert summary["accuracy"] == pytest.approx(fp32, abs=1e-9)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = (net(x).argmax(1) == y).double().mean().item()
    assert summary["accuracy_amp"] == pytest.approx(bf16, abs=1e-9)


def test_fp16_prints_no_scheduler_order_warning(tmp_path, recwarn, monkeypatch):
    """The GradScaler skips a step with inf gradients (on CPU its first one, as the user saw); torch then
    warned "lr_scheduler.step() before optimizer.step()". A huge initial scale forces that skip here."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: real(*a, init_scale=2.0**120, **k))
    run_prune(PruneConfig(model="lenet300", epochs=1, amp="fp16", out=str(tmp_path / "fp16"), progress=False))
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    state = load_checkpoint(tmp_path / "fp16" / "checkpoint.pt")
    assert state["scaler"]["scale"] < 2.0**120  # a step was skipped: the warning's condition happened


def test_lr_schedules_with_warmup():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)

    def lrs(**kw):
        sched = lr_scheduler(opt, PruneConfig(epochs=4, **kw), steps_per_epoch=10)
        out = []
        for _ in range(40):
            out.append(opt.param_groups[0]["lr"])
            opt.step(), sched.step()
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] = 1.0
        return out

    warm_cosine = lrs(warmup_epochs=1)
    assert warm_cosine[:3] == pytest.approx([0.1, 0.2, 0.3]) and warm_cosine[9] == pytest.approx(1.0)
    assert warm_cosine[10] == pytest.approx(1.0) and warm_cosine[25] == pytest.approx(0.5)
    step = lrs(lr_schedule="step", lr_milestones=(1, 3))
    assert step[9] == 1.0 and step[10] == pytest.approx(0.1) and step[30] == pytest.approx(0.01)
    assert set(lrs(lr_schedule="constant")) == {1.0}
    with pytest.raises(ValueError, match="lr_milestones"):
        PruneConfig(epochs=4, lr_milestones=(1,)).validate()


def test_label_smoothing_changes_the_loss(tmp_path):
    losses = []
    for smoothing in ("0", "0.1"):
        out = tmp_path / smoothing
        assert main(["prune", "--epochs", "1", "--label-smoothing", smoothing, "--no-progress", "--out", str(out)]) == 0
        losses.append(json.loads(open(out / "log.jsonl").readline())["train_loss"])
    assert losses[1] > losses[0] + 0.05  # smoothed targets cannot be fitted to zero loss


def _image_folder(root, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            os.makedirs(root / split / label)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")


@pytest.mark.skipif(not HAVE_TORCHVISION, reason="needs torchvision (see README: GPU-scale training)")
def test_image_folder_through_torchvision_with_workers(tmp_path):
    _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    assert main(["prune", "--data", str(tmp_path / "images"), "--model", "lenet5", "--epochs", "2",
                 "--batch-size", "4", "--workers", "2", "--checkpoint-every", "1", "--no-progress",
                 "--out", str(out)]) == 0
    info = json.load(open(out / "config.json"))["dataset"]
    assert (info["num_classes"], info["image_size"], info["train_size"], info["test_size"]) == (2, [224, 224], 12, 4)
    assert info["normalization"]["mean"] == [0.485, 0.456, 0.406]
    summary = json.load(open(out / "summary.json"))
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["epochs"] == 2


@pytest.mark.skipif(HAVE_TORCHVISION, reason="checks the message shown without torchvision")
def test_image_folder_without_torchvision_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "images" / "train" / "a").mkdir(parents=True)
    (tmp_path / "images" / "val" / "a").mkdir(parents=True)
    for data in (str(tmp_path / "images"), f"cifar10:{tmp_path}"):
        assert main(["prune", "--data", data, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "torchvision, which is not installed" in err
    assert not (tmp_path / "run").exists()


def _mnist_folder(root, n_train=40, n_test=10):
    """torchvision's MNIST layout (MNIST/raw, idx files) with random digits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())


@pytest.mark.skipif(not HAVE_TORCHVISION, reason="needs torchvision (see README: GPU-scale training)")
def test_mnist_folder_through_torchvision(tmp_path):
    _mnist_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["prune", "--data", f"mnist:{tmp_path / 'data'}", "--epochs", "1", "--batch-size", "8",
                 "--method", "str", "--target-sparsity", "0.5", "--no-progress", "--out", str(out)]) == 0
    info = json.load(open(out / "config.json"))["dataset"]
    assert (info["num_classes"], info["image_size"], info["in_channels"], info["train_size"]) == (10, [28, 28], 1, 40)
    assert json.load(open(out / "summary.json"))["sparsity"] == pytest.approx(0.5, abs=0.01)


class _OnDisk(torch.utils.data.Dataset):
    """Stands in for a dataset read from disk: not a TensorDataset, so batches go through a DataLoader."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_dataloader_path_serves_the_same_batches_as_memory():
    from sparsekern.pruning.train.batches import BatchSource, epoch_plan

    ds = torch.utils.data.TensorDataset(torch.randn(50, 1, 4, 4), torch.arange(50))
    plan = epoch_plan(50, 8, seed=3, epoch=1, rank=1, world=2)
    cpu = torch.device("cpu")
    memory = list(BatchSource(cpu).train(ds, plan, 1, start=2))
    loaded = list(BatchSource(cpu, workers=2).train(_OnDisk(ds), plan, 1, start=2))
    assert len(memory) == len(loaded) == len(plan) - 2
    for (xm, ym, gm), (xl, yl, gl) in zip(memory, loaded):
        assert torch.equal(xm, xl) and torch.equal(ym, yl) and gm == gl
    evaluated = torch.cat([y for _, y in BatchSource(cpu, workers=2).evaluate(_OnDisk(ds), 1, 2, batch_size=7)])
    assert torch.equal(evaluated, torch.arange(1, 50, 2))  # rank 1 of 2: every other example, in order


def test_progress_without_a_terminal_is_one_line_per_epoch(tmp_path, capsys):
    """tqdm's redraws filled non-TTY logs with multi-KB lines (issue 22); stderr here is not a TTY."""
    run_prune(PruneConfig(model="lenet300", epochs=2, out=str(tmp_path / "p"), progress=True))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], err
    assert "\r" not in err and all(len(line) < 200 and "test" in line and "sparsity" in line for line in lines)


def test_progress_on_a_terminal_is_a_bar(monkeypatch):
    pytest.importorskip("tqdm")
    from sparsekern.pruning.train import progress

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True)
    bar = progress.progress(True, 10, "epoch 1/1")
    assert not isinstance(bar, progress.EpochLine)
    bar.close()
    assert progress.progress(False, 10, "x") is None
