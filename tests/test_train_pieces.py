"""The trainer's pieces (sparsekern.pruning.train), each used alone as a user replacing the loop would."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from sparsekern.pruning.train.batches import BatchSource
from sparsekern.pruning.train.config import PruneConfig
from sparsekern.pruning.train.distributed import Distributed, resolve_device
from sparsekern.pruning.train.evaluation import accuracy, evaluated
from sparsekern.pruning.train.health import TrainingDiverged, check_finite
from sparsekern.pruning.train.lr_schedule import lr_scheduler
from sparsekern.pruning.train.run_dir import check_resumable, prepare_out, write_json, write_logs


def test_distributed_alone_is_one_process():
    d = Distributed("cpu")
    assert (d.on, d.rank, d.world) == (False, 0, 1)
    assert d.sum([1.5, 2.0], "cpu") == [1.5, 2.0]
    d.check_agree(nn.Linear(2, 2), 0.5, "cpu")  # nothing to compare with: no error
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device 'tpu'"):
        resolve_device("tpu")


def test_accuracy_counts_on_the_test_set():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
    x = torch.eye(4)[:3].repeat(4, 1)  # row i is class i % 3
    y = torch.arange(12) % 3
    y[0] = 1  # one wrong label: 11/12
    ds = torch.utils.data.TensorDataset(x, y)
    got = accuracy(model, ds, BatchSource(torch.device("cpu")), Distributed("cpu"), PruneConfig(batch_size=5))
    assert got == pytest.approx(11 / 12)
    assert not model.training  # evaluation leaves the model in eval mode


def test_evaluated_without_an_ema_changes_nothing():
    with evaluated(None):
        pass


def test_health_stops_on_a_non_finite_loss(tmp_path):
    config = PruneConfig(out=str(tmp_path))
    check_finite(1.0, 0, 0, config)
    with pytest.raises(TrainingDiverged, match="epoch 3 .*last good checkpoint \\(epoch 2\\)"):
        check_finite(math.nan, 2, 40, config)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        check_finite(math.inf, 0, 3, config)


def test_run_dir_writes_atomically_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    config = PruneConfig(out=str(out))
    assert prepare_out(config, Distributed("cpu")) is None and out.is_dir()
    write_json(str(out / "summary.json"), {"accuracy": 0.5})
    assert json.loads((out / "summary.json").read_text()) == {"accuracy": 0.5}
    rows = [{"epoch": 1, "step": 3, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.4, "sparsity": 0.1,
             "lr": 0.05, "seconds": 1.0, "extra": "not logged"}]
    write_logs(str(out), rows)
    write_logs(str(out), rows)  # a rewrite, never an append
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert not list(out.glob("*.tmp"))
    (out / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_out(config, Distributed("cpu"))
    assert prepare_out(PruneConfig(out=str(out), resume=True), Distributed("cpu")) == str(out / "checkpoint.pt")


def test_resume_checks_name_the_changed_setting():
    saved = PruneConfig(epochs=3).__dict__
    check_resumable(saved, PruneConfig(epochs=3, progress=False), "c.pt")  # a resume-free setting
    with pytest.raises(ValueError, match="epochs=3 \\(now 4\\)"):
        check_resumable(saved, PruneConfig(epochs=4), "c.pt")


def test_lr_schedule_alone():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_scheduler(opt, PruneConfig(epochs=2, lr_schedule="constant", warmup_epochs=1), steps_per_epoch=4)
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])
