"""--finetune-epochs for every method (issue 22, item 0): it runs, it keeps the sparsity the pruning
phase ended on, and a run resumed in the middle of fine-tuning ends exactly as an uninterrupted one."""
from __future__ import annotations

import json

import pytest
import torch

from sparsekern.cli import main
from sparsekern.pruning.train.loop import PruneConfig, run_prune

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {
    "dense": {},
    "gmp": {"target_sparsity": 0.5},
    "str": {"target_sparsity": 0.8},
    "l0": {},
    "l0_target": {"target_sparsity": 0.5},
    "l0_hc": {"target_flops": 0.6, "gate_lr": 0.1},
    "dep_l0": {"target_flops": 0.7, "gate_lr": 0.003},
}


class _Killed(Exception):
    pass


def _config(name, out, resume=False):
    return PruneConfig(method=name.removesuffix("_target"), model="lenet300", data="digits", epochs=2,
                       finetune_epochs=2, seed=3, out=str(out), resume=resume, progress=False, **METHODS[name])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_finetune_keeps_the_sparsity_and_resumes_exactly(tmp_path, name):
    straight = run_prune(_config(name, tmp_path / "straight"))
    rows = [json.loads(line) for line in open(tmp_path / "straight" / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["sparsity"] == rows[3]["sparsity"] == rows[1]["sparsity"]  # the end of pruning, kept
    if name in ("str", "gmp", "l0_target"):
        assert rows[3]["sparsity"] == pytest.approx(METHODS[name]["target_sparsity"], abs=0.01)
    assert straight["accuracy"] > 0.3

    def kill_after_first_finetune_epoch(epoch, row):
        if epoch == 3:
            raise _Killed

    with pytest.raises(_Killed):
        run_prune(_config(name, tmp_path / "killed"), on_epoch_end=kill_after_first_finetune_epoch)
    resumed = run_prune(_config(name, tmp_path / "killed", resume=True))
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["accuracy"] == straight["accuracy"] and resumed["sparsity"] == straight["sparsity"]


def test_l0_finetune_from_the_cli(tmp_path, capsys):
    """The user's command: it crashed at the first fine-tune step with a raw traceback."""
    out = str(tmp_path / "l0")
    assert main(["prune", "--method", "l0", "--model", "lenet5", "--epochs", "1", "--finetune-epochs", "1",
                 "--target-sparsity", "0.5", "--no-progress", "--out", out]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("other", [{"ema": 0.9}, {"fsdp": True}])
def test_str_finetune_refuses_what_its_fold_cannot_reach(tmp_path, other):
    """STR's fine-tuning folds the thresholds into the full weights: not into the EMA's copies or
    FSDP's shards, where the pruned weights would come back. Refused up front, naming the setting."""
    config = PruneConfig(method="str", target_sparsity=0.5, epochs=1, finetune_epochs=1, out=str(tmp_path), **other)
    with pytest.raises(ValueError, match=f"finetune_epochs with method 'str' .*{next(iter(other))}"):
        config.validate()
    config.finetune_epochs = 0
    config.validate()  # each alone is fine
