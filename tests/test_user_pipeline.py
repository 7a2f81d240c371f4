"""What a new user hit running the pipeline (issue 10): each defect, as the user ran it."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import sparsekern as sk
from helpers import cli_error
from sparsekern.cli import main
from sparsekern.pruning.train import loop as trainer
from sparsekern.pruning.train.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from sparsekern.pruning.train.runlock import LOCK_NAME

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRUNE = ["prune", "--model", "lenet300", "--data", "digits", "--epochs", "1", "--seed", "1", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "dense")
    assert main(PRUNE + ["--out", out]) == 0
    return out


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# 1 ------------------------------------------------------------------ one run per directory
def test_a_live_run_holds_its_directory_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{os.getppid()}\n")  # a live process that is not us
    err = cli_error(PRUNE + ["--out", str(out)], capsys)
    assert f"PID {os.getppid()}" in err and "in use" in err
    assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing of ours was written
    (out / LOCK_NAME).write_text(f"{_dead_pid()}\n")  # a killed run's lock
    assert main(PRUNE + ["--out", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()  # released at the end
    assert os.path.isfile(out / "summary.json")


# 2 ------------------------------------------------------------------ non-finite data and loss
def test_nan_or_inf_data_is_refused_with_the_count(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(50, 1, 8, 8)).astype(np.float32)
    x[3, 0, 1, 1], x[7, 0, 2, 2], x[9, 0, 0, 0] = np.nan, np.inf, -np.inf
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.arange(50) % 10)
    out = tmp_path / "run"
    err = cli_error(PRUNE + ["--data", str(path), "--out", str(out)], capsys)
    assert str(path) in err and "3 NaN or infinite" in err
    assert not out.exists()


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def diverges_in_epoch_2(*args, **kwargs):  # digits, batch 64: 23 steps per epoch
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 30 else loss

    monkeypatch.setattr(trainer.F, "cross_entropy", diverges_in_epoch_2)
    out = tmp_path / "run"
    err = cli_error(PRUNE[:-3] + ["--epochs", "3", "--no-progress", "--out", str(out)], capsys)
    assert "loss became nan in epoch 2" in err and "epoch 1" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not (out / "summary.json").exists() and not (out / LOCK_NAME).exists()


# 3 ------------------------------------------------------------------ one line and exit 2, never a traceback
def test_user_errors_are_one_line(tmp_path, capsys, finished):
    assert "device 'tpu'" in cli_error(PRUNE + ["--device", "tpu", "--out", str(tmp_path / "o")], capsys)
    assert "is a directory" in cli_error(["export", finished, "--out", str(tmp_path)], capsys)
    for dtypes in ("int8", "foo", ""):
        assert "--dtypes" in cli_error(["selftest", "--dtypes", dtypes], capsys)
    assert not (tmp_path / "o").exists()


# 4 ------------------------------------------------------------------ option validation
def test_options_are_validated_and_explained(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert "momentum must be in [0, 1)" in cli_error(PRUNE + ["--momentum", "2", "--out", out], capsys)
    err = cli_error(PRUNE + ["--method", "dense", "--gate-lr", "0.1", "--out", out], capsys)
    assert "does not take gate_lr" in err and "finite" not in err
    assert main(PRUNE + ["--method", "str", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "without --target-sparsity or --lambda" in err and "--weight-decay 0.0005" in err


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(finished, capsys):
    before = {n: os.stat(os.path.join(finished, n)).st_mtime_ns for n in os.listdir(finished)}
    assert main(PRUNE + ["--out", finished, "--resume"]) == 0
    assert "already finished its 1 epochs" in capsys.readouterr().out
    assert {n: os.stat(os.path.join(finished, n)).st_mtime_ns for n in os.listdir(finished)} == before


def test_a_checkpoint_with_objects_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"sparsekern_checkpoint": 1, "thing": nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value) and "objects other than tensors" in str(e.value)


# 5 ------------------------------------------------------------------ a mistyped model
def test_an_unknown_model_lists_the_built_in_names_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    err = cli_error(PRUNE + ["--model", "nosuchnet", "--out", str(out)], capsys)
    assert "nosuchnet" in err and "lenet300, lenet5, vgg16, resnet20, resnet56" in err
    assert not out.exists()


# 6 ------------------------------------------------------------------ sparsify of a bare layer
@pytest.mark.parametrize("method,cls", [("str", sk.nn.STRLinear), ("l0", sk.nn.L0Linear), ("gmp", sk.nn.MaskedLinear)])
def test_sparsify_converts_a_bare_layer(method, cls):
    dense = nn.Linear(8, 4)
    sparse = sk.sparsify(dense, method)
    assert type(sparse) is cls
    torch.testing.assert_close(sparse.weight, dense.weight)
    conv = sk.sparsify(nn.Conv2d(3, 4, 3), "str")
    assert type(conv) is sk.nn.STRConv2d
    assert type(sk.sparsify(nn.Linear(8, 4), "str", exclude="")) is nn.Linear  # patterns see the name ""


# 7 ------------------------------------------------------------------ file modes follow the umask
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_torch_save({"w": torch.ones(2)}, tmp_path / "model.pt")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    modes = {n: stat.S_IMODE(os.stat(tmp_path / n).st_mode) for n in ("model.pt", "plain.json")}
    assert modes == {"model.pt": 0o666 & ~umask, "plain.json": 0o666 & ~umask}


def test_run_files_share_one_mode(finished):
    modes = {n: stat.S_IMODE(os.stat(os.path.join(finished, n)).st_mode) for n in os.listdir(finished)}
    assert len(set(modes.values())) == 1, modes


# 8 ------------------------------------------------------------------ the README's L0 example runs and works
def _readme_block(heading: str) -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_readme_l0_example_runs_and_prunes(capsys):
    scope: dict = {}
    exec(compile(_readme_block("### A complete L0 example"), "README.md", "exec"), scope)
    assert scope["accuracy"] > 0.9 and scope["sparsity"] > 0.4  # measured 0.967, 0.594; chance is 0.1
    assert "test accuracy" in capsys.readouterr().out


def test_regularization_needs_the_training_set_size():
    with pytest.raises(ValueError, match="num_samples"):
        sk.regularization(sk.sparsify(nn.Sequential(nn.Linear(4, 4)), "l0"))


def test_library_and_cli_share_the_l0_gates():
    model = sk.sparsify(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), "l0")
    from sparsekern.pruning.defaults import L0_GRANULARITY

    assert (model[0].granularity, model[2].granularity) == (L0_GRANULARITY[nn.Conv2d], L0_GRANULARITY[nn.Linear])
    assert model[0].drop_rate == model[2].drop_rate == sk.L0_DROP_RATE
    assert trainer.L0_LAMBDA == sk.L0_LAMBDA and trainer.L0_GATE_LR == sk.L0_GATE_LR


# 10 ----------------------------------------------------------------- demo, report and selftest say what they show
def test_demo_labels_its_columns(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "weight sparsity" in text and "MACs/example" in text and "biases are never pruned" in text
    assert "FLOPs" not in text


def test_selftest_says_what_it_skips_and_times(capsys):
    assert main(["selftest", "--dtypes", "float32"]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines() if line.endswith(" ok")]
    assert rows and "torch" not in rows  # the reference is not checked against itself
    assert "[64, 3, 7, 7]" in text
    for name in ("cuda", "triton", "cpu"):
        assert name in rows or f"not checked: {name} (" in text


# 9 ------------------------------------------------------------------ startup cost
def test_digits_read_from_the_bundled_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from sparsekern.data.datasets import _digits_from_bundled_file

    x, y = _digits_from_bundled_file()
    want = load_digits()
    assert np.array_equal(x, want.images.reshape(-1, 64)) and np.array_equal(y, want.target)


# docs ---------------------------------------------------------------- evaluating an exported model, as the README says
def test_readme_evaluation_of_an_exported_model_reproduces_the_summary(finished, capsys):
    code = _readme_block("### Evaluating an exported model").replace('"runs/str90"', repr(finished))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    summary = json.load(open(os.path.join(finished, "summary.json")))
    assert scope["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-6)  # float32 mean; one image is 3e-3
    assert f"test accuracy {summary['accuracy']:.4f}" in capsys.readouterr().out


def test_readme_cites_the_projects_own_math():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert "SPEC.md" not in text and "docs/math.md" in text and "without losing accuracy" not in text
    assert os.path.isfile(os.path.join(ROOT, "docs", "math.md"))


def test_every_help_option_shows_its_default(capsys):
    from sparsekern.cli import build_parser

    parser = build_parser()
    for command in ("prune", "demo", "export", "report"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
    assert main(["selftest", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--epochs EPOCHS", "--seed SEED", "--momentum MOMENTUM", "--dtypes DTYPES",
                   "--backend BACKEND", "--target-sparsity TARGET_SPARSITY"):
        assert option in text
    entries = re.split(r"\n  (?=-)", text)
    for entry in entries:
        name = entry.split()[0]
        if name.startswith("--") and name not in ("--help", "--out"):
            assert "default" in entry, entry
        assert len(re.findall(r"\(default: ", " ".join(entry.split()))) <= 1, entry  # issue 22: said twice


def test_demo_rerun_clears_a_killed_run_but_not_a_live_one(tmp_path, capsys):
    run_dir = tmp_path / "demo" / "dense"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_NAME).write_text(f"{os.getppid()}\n")  # a live demo holds it
    assert "in use" in cli_error(["demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--no-progress"], capsys)
    (run_dir / LOCK_NAME).write_text(f"{_dead_pid()}\n")  # a killed one left it
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0


# 9 ------------------------------------------------------------------ the thread count is chosen and said
def test_prune_says_its_thread_count(tmp_path, capsys, monkeypatch):
    assert main(PRUNE + ["--out", str(tmp_path / "a")]) == 0
    assert "(1 torch thread)" in capsys.readouterr().out  # a LeNet on digits: one thread
    monkeypatch.setenv("SPARSEKERN_THREADS", "2")
    assert main(PRUNE + ["--out", str(tmp_path / "b")]) == 0
    assert "(2 torch threads)" in capsys.readouterr().out
    monkeypatch.setenv("SPARSEKERN_THREADS", "many")
    assert "SPARSEKERN_THREADS" in cli_error(PRUNE + ["--out", str(tmp_path / "c")], capsys)
