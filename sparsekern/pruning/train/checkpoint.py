"""Crash-safe checkpoints and the RNG state they carry.

``save_checkpoint`` writes a temp file in the target's directory, fsyncs it and
renames it over the target, so a crash leaves either the old or the new file,
never half of one. ``load_checkpoint`` reads with ``torch.load(weights_only=True)``
(no arbitrary unpickling) and names the file in every error.
"""
from __future__ import annotations

import os
import random
import re
import warnings
import zipfile

import numpy as np
import torch

from sparsekern.pruning.atomic_files import atomic_write

FORMAT_KEY = "sparsekern_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or not written by sparsekern."""


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``; a failed write (disk
    full, read-only file system) is a ``WriteError`` and leaves the previous file in place."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _safe_load(path: str, what: str, map_location):
    """torch.load(weights_only=True) whose every failure is a CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r}: no such file")
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; torch.load would read anything else as a legacy pickle and
        # fail with noise (a bare number, a pickle-protocol warning) on a file of random bytes.
        raise CheckpointError(f"{what} {path!r} is corrupt, truncated or not a torch file (not a complete zip "
                              "archive, the format torch.save writes)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 5": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        raise CheckpointError(f"{what} {path!r} is corrupt, truncated or not a torch file ({_reason(e)})") from e


def _reason(e: Exception) -> str:
    """torch's error in a few words: its first sentence, without its advice to load with
    weights_only=False (never safe for a file we cannot vouch for) or a bare error code."""
    text = " ".join(str(e).split())
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain containers"
    text = re.sub(r"\s*\(\d+\)$", "", text.split(". ")[0].rstrip("."))
    return text if text and not text.isdigit() else type(e).__name__


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically write ``state`` (a dict of tensors, numbers, strings and containers) to ``path``."""
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    atomic_torch_save({FORMAT_KEY: FORMAT_VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The state dict saved by ``save_checkpoint``; CheckpointError naming ``path`` if it is not one."""
    path = os.fspath(path)
    state = _safe_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or FORMAT_KEY not in state:
        raise CheckpointError(f"checkpoint {path!r} was not written by sparsekern (no {FORMAT_KEY!r} marker)")
    if state[FORMAT_KEY] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {state[FORMAT_KEY]}, "
                              f"this sparsekern reads version {FORMAT_VERSION}")
    state = dict(state)
    del state[FORMAT_KEY]
    return state


# ---------------------------------------------------------------- RNG state as plain tensors
def rng_state() -> dict:
    """torch, numpy and python RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A plain ``{name: tensor}`` file (an exported model), read with weights_only=True."""
    path = os.fspath(path)
    state = _safe_load(path, "weights file", "cpu")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path!r} is not a state_dict of tensors")
    return state
