"""What the file system and the environment refuse, as one line and exit code 2 (issue 22, item 7):
a read-only --out, a full disk mid-checkpoint (the last checkpoint survives; resume is exact), a
torchvision built for another torch, and a seed beyond 64 bits."""
from __future__ import annotations

import errno
import os
import sys

import pytest
import torch

from helpers import cli_error
from sparsekern.cli import main
from sparsekern.pruning.train import checkpoint as ck
from sparsekern.pruning.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

PRUNE = ["prune", "--model", "lenet300", "--data", "digits", "--seed", "4", "--no-progress"]


def _refuse(monkeypatch, name: str, inside: str, code: int):
    """os.<name> raises OSError(code) for paths under ``inside`` (root ignores chmod, so we simulate)."""
    real = getattr(os, name)

    def refused(path, *args, **kwargs):
        if os.fspath(path).startswith(inside):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, refused)


def test_out_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    new = str(tmp_path / "ro" / "run")
    _refuse(monkeypatch, "makedirs", str(tmp_path / "ro"), errno.EROFS)
    err = cli_error(PRUNE + ["--epochs", "1", "--out", new], capsys)
    assert "Read-only file system" in err and new in err and "Errno" not in err
    existing = tmp_path / "existing"  # the directory exists; its first file (the lock) is refused
    existing.mkdir()
    _refuse(monkeypatch, "open", str(existing), errno.EROFS)
    err = cli_error(PRUNE + ["--epochs", "1", "--out", str(existing)], capsys)
    assert "Read-only file system" in err and str(existing) in err


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes (part of the data is written)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_a_full_disk_keeps_the_last_checkpoint_and_resume_is_exact(tmp_path, capsys, monkeypatch):
    argv = PRUNE + ["--method", "l0", "--epochs", "3"]
    assert main(argv + ["--out", str(tmp_path / "straight")]) == 0
    real_save = torch.save

    def disk_full_at_epoch_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:  # the second epoch's checkpoint, mid-write
            return real_save(obj, _FullDisk(f, room=5000), *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", disk_full_at_epoch_2)
    out = tmp_path / "full"
    err = cli_error(argv + ["--out", str(out)], capsys)
    assert "No space left on device" in err and "checkpoint.pt" in err and "--resume" in err
    assert "enforce fail" not in err and "Errno" not in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # the last good checkpoint survived
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    monkeypatch.setattr(ck.torch, "save", real_save)  # space freed
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_while_writing_the_logs(tmp_path, capsys, monkeypatch):
    """The disk fills while log.jsonl's temp file is flushed: one line naming log.jsonl, no .tmp left."""
    real_open, real_fsync, log_fds = os.open, os.fsync, set()

    def open_(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if "log.jsonl" in os.fspath(path) and os.fspath(path).endswith(".tmp"):
            log_fds.add(fd)
        return fd

    def fsync(fd):
        if fd in log_fds:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "logs"
    err = cli_error(PRUNE + ["--epochs", "1", "--out", str(out)], capsys)
    monkeypatch.undo()
    assert log_fds, "the log's temp file was never opened: the test did not exercise the write"
    assert "No space left on device" in err and "log.jsonl" in err
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.fixture
def broken_torchvision(tmp_path, monkeypatch):
    """A torchvision built for another torch: importing it fails as the user saw."""
    package = tmp_path / "site" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_a_torchvision_for_another_torch_is_one_line(tmp_path, capsys, broken_torchvision):
    err = cli_error(PRUNE + ["--model", "resnet18", "--out", str(tmp_path / "a")], capsys)
    assert "torchvision" in err and "does not load" in err and "nms" in err and "'resnet18'" in err
    images = tmp_path / "images"
    for split in ("train", "val"):
        (images / split / "a").mkdir(parents=True)
    err = cli_error(PRUNE + ["--data", str(images), "--out", str(tmp_path / "b")], capsys)
    assert "torchvision" in err and "does not load" in err and str(images) in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_seed_beyond_64_bits_names_the_argument(tmp_path, capsys):
    err = cli_error(PRUNE + ["--seed", "99999999999999999999", "--out", str(tmp_path / "s")], capsys)
    assert "seed" in err and "Overflow" not in err
    assert main(PRUNE[:-3] + ["--seed", str(2**64 - 1), "--epochs", "1", "--no-progress",
                              "--out", str(tmp_path / "max")]) == 0  # the largest seed runs
