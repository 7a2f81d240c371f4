"""Checkpoints: atomic writes, safe loading, and kill-and-resume giving bit-identical weights."""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from sparsekern.pruning.train import checkpoint as ck
from sparsekern.pruning.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sparsekern.pruning.train.loop import PruneConfig, run_prune


pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    state = {"w": torch.randn(3, 4), "epoch": 3, "history": [{"a": 1.5}], "name": "x", "none": None}
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back.keys() == state.keys()
    assert torch.equal(back["w"], state["w"]) and back["history"] == state["history"] and back["none"] is None


@pytest.mark.parametrize("crash_in", ["torch.save", "os.replace"])
def test_crash_during_write_keeps_the_old_file(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.zeros(1000)})
    before = path.read_bytes()

    def partial_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    def failing_replace(src, dst):
        raise OSError("simulated crash before the rename")

    if crash_in == "torch.save":
        monkeypatch.setattr(ck.torch, "save", partial_save)
    else:
        monkeypatch.setattr(ck.os, "replace", failing_replace)
    with pytest.raises((KeyboardInterrupt, OSError)):
        save_checkpoint(path, {"w": torch.ones(1000)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.pt"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(1000))


class _Payload:
    def __reduce__(self):
        return (open, (os.environ["SK_TEST_MARKER"], "w"))


def test_corrupt_truncated_foreign_and_malicious_files(tmp_path, monkeypatch):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(100)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.zeros(2)}, foreign)
    malicious = tmp_path / "malicious.pt"
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SK_TEST_MARKER", str(marker))
    torch.save({"x": _Payload()}, malicious)
    raw_pickle = tmp_path / "raw.pkl"
    raw_pickle.write_bytes(pickle.dumps({"x": _Payload()}))
    for path, words in [(truncated, "corrupt, truncated"), (garbage, "corrupt, truncated"),
                        (foreign, "not written by sparsekern"), (malicious, "corrupt, truncated"),
                        (raw_pickle, "corrupt, truncated"), (tmp_path / "absent.pt", "no such file")]:
        with pytest.raises(CheckpointError, match=words) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value)
    assert not marker.exists()  # nothing was unpickled


def test_rng_state_round_trip():
    random.random(), np.random.rand(), torch.rand(1)
    state = ck.rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ck.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


class _Killed(Exception):
    pass


METHODS = [("dense", {}), ("str", {"target_sparsity": 0.8}), ("gmp", {"target_sparsity": 0.8}), ("l0", {"lam": 0.01}),
           ("l0", {"recipe": "paper"}), ("str", {"recipe": "paper", "s_init": -2.0, "lam": 0.01}),
           ("l0_hc", {"lam": 1e-4}), ("dep_l0", {"target_flops": 0.5, "dependency": "backward"})]


@pytest.mark.parametrize("method,opts", METHODS, ids=[m + ("-paper" if o.get("recipe") else "") for m, o in METHODS])
def test_kill_and_resume_is_bit_identical(tmp_path, method, opts):
    _kill_and_resume(tmp_path, method, opts, epochs=2, kill_after=1)


def test_kill_and_resume_after_the_str_refit_is_bit_identical(tmp_path):
    """Killed after TargetSparsity refitted the survivors (step 32 of 48): the resumed run rebuilds
    the fixed pruned set from the checkpoint's weights."""
    _kill_and_resume(tmp_path, "str", {"target_sparsity": 0.8}, epochs=4, kill_after=3)


def _kill_and_resume(tmp_path, method, opts, epochs, kill_after):
    def config(out, resume=False):
        return PruneConfig(method=method, model="lenet300", data="digits", epochs=epochs, seed=3, out=str(out),
                           resume=resume, progress=False, batch_size=128, **opts)

    straight = run_prune(config(tmp_path / "straight"))

    def kill(epoch, row):
        if epoch == kill_after:
            raise _Killed
    with pytest.raises(_Killed):
        run_prune(config(tmp_path / "killed"), on_epoch_end=kill)
    assert not (tmp_path / "killed" / "summary.json").exists()
    # Scramble every RNG between the kill and the resume, as a new process would.
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    resumed = run_prune(config(tmp_path / "killed", resume=True))

    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    full_b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert full_a["model"].keys() == full_b["model"].keys()
    for k, v in full_a["model"].items():  # thresholds, gates and the layers' noise offsets too
        assert torch.equal(v, full_b["model"][k]) if isinstance(v, torch.Tensor) else v == full_b["model"][k], k
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in full_a["history"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in full_b["history"]]
    assert straight["accuracy"] == resumed["accuracy"] and straight["sparsity"] == resumed["sparsity"]
    assert len((tmp_path / "killed" / "log.csv").read_text().splitlines()) == 1 + epochs  # header + epochs


def test_resume_refuses_other_settings_and_overwrite(tmp_path):
    cfg = PruneConfig(epochs=1, out=str(tmp_path / "r"), progress=False)
    run_prune(cfg)
    with pytest.raises(ValueError, match="already holds a run"):
        run_prune(cfg)
    with pytest.raises(ValueError, match=r"different settings: lr=0.05 \(now 0.1\)"):
        run_prune(PruneConfig(epochs=1, out=str(tmp_path / "r"), progress=False, resume=True, lr=0.1))


def test_resume_from_a_foreign_checkpoint_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    save_checkpoint(run_dir / "checkpoint.pt", {"weights": torch.zeros(3)})  # ours, but not a training state
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        run_prune(PruneConfig(epochs=1, out=str(run_dir), progress=False, resume=True))
    cfg = PruneConfig(epochs=1, out=str(tmp_path / "s"), progress=False)
    run_prune(cfg)
    state = load_checkpoint(tmp_path / "s" / "checkpoint.pt")
    state["model"] = {"fc1.weight": torch.zeros(2, 2)}
    save_checkpoint(tmp_path / "s" / "checkpoint.pt", state)
    with pytest.raises(CheckpointError, match="does not match this run"):
        run_prune(PruneConfig(epochs=1, out=str(tmp_path / "s"), progress=False, resume=True))
