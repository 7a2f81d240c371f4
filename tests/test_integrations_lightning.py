"""The Lightning callback with the real Lightning Trainer on CPU, a LightningModule around a small
net on synthetic data: targets reached, values in the user's logger (CSVLogger's file), the
finalized module computing the sparse module's outputs.
"""
from __future__ import annotations

import csv
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="lightning not installed (make deps installs it)")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import sparsekern as sk  # noqa: E402
from sparsekern.integrations.lightning import SparsityCallback  # noqa: E402
from sparsekern.nn import ChannelGate, SparseModule  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
EPOCHS, BATCH, N = 3, 32, 512  # 16 optimizer steps per epoch


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 20, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _fit(tmp_path, callback, max_epochs=EPOCHS, callbacks_extra=(), ckpt_path=None, **trainer_args):
    torch.manual_seed(0)
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[callback, *callbacks_extra], accelerator="cpu",
                         logger=CSVLogger(str(tmp_path)), log_every_n_steps=8,
                         enable_checkpointing=bool(callbacks_extra), enable_progress_bar=False,
                         enable_model_summary=False, **trainer_args)
    module = Classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module


def _csv(trainer, key):
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
def test_fit_reaches_the_target_logs_and_finalizes(tmp_path, method):
    callback = SparsityCallback(method, target_sparsity=0.9)
    trainer, module = _fit(tmp_path, callback)
    steps = EPOCHS * N // BATCH
    logged = _csv(trainer, "sparsekern/sparsity")
    assert len(logged) == steps // 8 and abs(logged[-1] - 0.9) < 0.01
    assert abs(sk.global_sparsity(module) - 0.9) < 0.01
    if method != "l0":
        assert callback.session.controller.step_count == steps
    else:  # the constraint's multiplier times the expected density entered the gates' gradient
        assert max(_csv(trainer, "sparsekern/penalty")) > 0 and max(_csv(trainer, "sparsekern/lambda")) > 0
    final = callback.final_model
    assert type(final) is Classifier and not any(isinstance(m, SparseModule) for m in final.modules())
    x, _ = _data()
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(final(x), module(x), rtol=0, atol=0)


def test_accumulation_steps_the_controller_once_per_optimizer_step(tmp_path):
    callback = SparsityCallback("gmp", target_sparsity=0.5)
    trainer, module = _fit(tmp_path, callback, accumulate_grad_batches=2)
    assert callback.session.controller.step_count == EPOCHS * N // BATCH // 2
    assert abs(sk.global_sparsity(module) - 0.5) < 0.01


def test_neuron_gates_reach_a_flops_target(tmp_path):
    x, _ = _data()
    callback = SparsityCallback("l0_hc", target_flops=0.5, layers=["net.0", "net.2"], example=x[:8])
    trainer, module = _fit(tmp_path, callback)
    assert sum(isinstance(m, ChannelGate) for m in module.modules()) == 2
    assert abs(_csv(trainer, "sparsekern/flops_fraction")[-1] - 0.5) < 0.01
    final = callback.final_model
    assert not any(isinstance(m, (SparseModule, ChannelGate)) for m in final.modules())
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(final(x), module(x), rtol=1e-6, atol=1e-6)


def test_refusals(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))  # what 16-mixed is on a GPU
    with pytest.raises(ValueError, match="loss scaler is not supported"):
        _fit(tmp_path, SparsityCallback("str", target_sparsity=0.5), plugins=[scaled])
    with pytest.raises(ValueError, match="needs target_sparsity"):
        SparsityCallback("gmp")


@pytest.mark.parametrize("method", ["str", "l0"])
def test_fit_resumed_from_a_checkpoint_keeps_the_controller_and_gate_optimizer(tmp_path, method):
    from lightning.pytorch.callbacks import ModelCheckpoint

    steps = EPOCHS * N // BATCH
    whole = SparsityCallback(method, target_sparsity=0.9)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    _fit(tmp_path / "whole", whole, callbacks_extra=[saver])
    resumed = SparsityCallback(method, target_sparsity=0.9)
    ckpt = next((tmp_path / "ckpt").glob("epoch=0*.ckpt"))
    _, module = _fit(tmp_path / "resumed", resumed, ckpt_path=str(ckpt))
    assert resumed.session.controller.step_count == whole.session.controller.step_count
    assert abs(sk.global_sparsity(module) - 0.9) < 0.01
    if method == "l0":  # the gates' Adam went on from the checkpoint's steps (36: frozen at 75% of 48)
        def adam_steps(callback):
            return [int(s["step"]) for s in callback.session.gate_optimizer.state_dict()["state"].values()]
        assert adam_steps(resumed) == adam_steps(whole) == [steps * 3 // 4] * 3
