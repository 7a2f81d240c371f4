"""Files of garbage given where a run file or data is expected (issue 22, item 9): one clean line,
no advice to unpickle (allow_pickle=, weights_only=False), no bare numbers, no leaked warnings."""
from __future__ import annotations

import os
import re
import shutil
import warnings

import numpy as np
import pytest

from helpers import cli_error
from sparsekern.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

GARBAGE = {
    "random": lambda: np.random.default_rng(0).bytes(3000),
    "pickle_protocol_5": lambda: b"\x80\x05" + np.random.default_rng(1).bytes(500),  # torch warned about it
    "truncated_zip": lambda: b"PK\x03\x04" + np.random.default_rng(2).bytes(500),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "run")
    assert main(["prune", "--epochs", "1", "--no-progress", "--out", out]) == 0
    return out


def _clean(err: str) -> None:
    assert "allow_pickle" not in err and "weights_only" not in err and "pickle.load" not in err, err
    assert not re.search(r"\(\d+\)|char \d+|position \d+", err), err
    assert "internal miniz error" not in err, err


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_run_files_and_data_are_clean_one_liners(tmp_path, capsys, finished, kind):
    data = GARBAGE[kind]()
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (run / "model.pt").write_bytes(data)
        err = cli_error(["export", str(run), "--out", str(tmp_path / "x.pt")], capsys)
        assert "model.pt" in err and "corrupt, truncated or not a torch file" in err
        _clean(err)
        (run / "checkpoint.pt").write_bytes(data)
        err = cli_error(["prune", "--epochs", "1", "--no-progress", "--resume", "--out", str(run)], capsys)
        assert "checkpoint.pt" in err and "corrupt, truncated or not a torch file" in err
        _clean(err)
        (run / "summary.json").write_bytes(data)
        err = cli_error(["report", str(run)], capsys)
        assert "summary.json" in err and "not JSON" in err
        _clean(err)
        npz = tmp_path / "data.npz"
        npz.write_bytes(data)
        err = cli_error(["prune", "--data", str(npz), "--no-progress", "--out", str(tmp_path / "new")], capsys)
        assert "data.npz" in err and ".npz" in err
        _clean(err)
    assert not [w for w in caught if "pickle" in str(w.message).lower()], [str(w.message) for w in caught]


def test_an_npz_of_python_objects_is_refused_without_advice_to_unpickle(tmp_path, capsys):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    err = cli_error(["prune", "--data", str(path), "--no-progress", "--out", str(tmp_path / "r")], capsys)
    assert "Python objects" in err
    _clean(err)
    assert not os.path.exists(tmp_path / "r")


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    import builtins

    from sparsekern.data import datasets

    real = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    monkeypatch.setattr(datasets, "_digits_from_bundled_file", lambda: (None, None))
    with pytest.raises(ValueError, match=r"scikit-learn.*\[data\] extra"):
        datasets.load_dataset("digits")
