"""``--format sparse``: a torch file whose CSR layers are stored as their plain parts.

Layout: ``{"sparsekern_export": JSON metadata (architecture + per-layer formats and timings),
"state_dict": {name: tensor}}``, where a CSR layer's entries are ``crow_indices``, ``col_indices``,
``values`` (and ``bias``). Only plain tensors and strings: ``torch.load(weights_only=True)`` reads
it, and the CSR indices are checked when the layers are rebuilt (``sparsekern.nn.csr``).
"""
from __future__ import annotations

import io
import json
import os

import torch
from torch import nn

from sparsekern.pruning.surgery.export.files import (ExportFileError, atomic_write_bytes, build_architecture,
                                                     metadata_from_json)
from sparsekern.pruning.surgery.export.format_choice import apply_formats

FILE_KEY = "sparsekern_export"


def save_sparse(model: nn.Module, meta: dict, layers: dict[str, dict], path: str) -> None:
    """``model`` as ``choose_formats`` returned it; ``layers`` its per-layer records."""
    buf = io.BytesIO()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({FILE_KEY: json.dumps({**meta, "format": "sparse", "layers": layers}), "state_dict": state}, buf)
    atomic_write_bytes(buf.getvalue(), path)


def read_sparse(path: str) -> tuple[dict, dict]:
    """The state_dict and metadata of a sparse export (weights_only load)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportFileError(f"{path!r}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        raise ExportFileError(f"{path!r} is corrupt or not a torch file ({str(e).splitlines()[0][:200]})") from e
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportFileError(f"{path!r} is a plain state_dict export, which holds no architecture: load it into "
                              "sparsekern.cli.export.finalized_architecture(run_dir)")
    if not (isinstance(obj, dict) and isinstance(obj.get(FILE_KEY), str) and isinstance(obj.get("state_dict"), dict)):
        raise ExportFileError(f"{path!r} is not a sparse export (written by `sparsekern export --format sparse`)")
    state = obj["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
               for k, v in state.items()):
        raise ExportFileError(f"{path!r}: the state_dict must hold plain (strided) tensors only")
    return state, metadata_from_json(obj[FILE_KEY], path)


def load_sparse(path: str) -> nn.Module:
    """The exported model (eval mode) with its CSR layers rebuilt and checked."""
    state, meta = read_sparse(path)
    layers = meta.get("layers")
    if not isinstance(layers, dict):
        raise ExportFileError(f"{path!r}: metadata lacks the per-layer formats")
    try:
        model = apply_formats(build_architecture(meta, repr(path)), layers)
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as e:
        raise ExportFileError(f"{path!r}: {' '.join(str(e).split()[:40])}") from e
    return model.eval()
