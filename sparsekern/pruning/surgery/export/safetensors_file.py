"""``--format safetensors``: the finalized weights, with the architecture as JSON in the header's
metadata, so ``load_safetensors`` rebuilds the model without the run directory. Safetensors holds
only raw tensor bytes, so reading an untrusted file runs no code."""
from __future__ import annotations

import json

from torch import Tensor, nn

from sparsekern.pruning.surgery.export.files import (METADATA_KEY, ExportFileError, atomic_write_bytes,
                                                     build_architecture, metadata_from_json)


def _library():
    try:
        import safetensors.torch
    except ImportError as e:
        raise ImportError("the safetensors format needs the safetensors package "
                          "(pip install 'sparsekern[export]' or pip install safetensors)") from e
    return safetensors


def save_safetensors(state: dict[str, Tensor], meta: dict, path: str) -> None:
    st = _library()
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}  # safetensors refuses shared storage
    atomic_write_bytes(st.torch.save(tensors, metadata={METADATA_KEY: json.dumps(meta)}), path)


def read_safetensors(path: str) -> tuple[dict[str, Tensor], dict]:
    """The tensors and the export metadata of a safetensors file."""
    st = _library()
    try:
        with st.safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise ExportFileError(f"{path!r} is not a readable safetensors file ({str(e).splitlines()[0]})") from e
    if METADATA_KEY not in header:
        raise ExportFileError(f"{path!r}: safetensors file without sparsekern metadata (not written by "
                              "`sparsekern export --format safetensors`)")
    return tensors, metadata_from_json(header[METADATA_KEY], path)


def load_safetensors(path: str) -> nn.Module:
    """The exported model (plain PyTorch, eval mode) rebuilt from a safetensors export."""
    tensors, meta = read_safetensors(path)
    model = build_architecture(meta, repr(path))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ExportFileError(f"{path!r}: weights do not fit the recorded architecture "
                              f"({' '.join(str(e).split()[:40])})") from e
    return model.eval()
