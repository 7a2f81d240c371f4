"""``load_exported(path)``: any file ``sparsekern export`` wrote with architecture metadata, back as a
callable model in eval mode (the format is read from the file's first bytes, not its name)."""
from __future__ import annotations

import os
import struct

from torch import Tensor, nn

from sparsekern.pruning.surgery.export.files import ExportFileError


class OnnxModel(nn.Module):
    """An onnxruntime session behind an nn.Module's call: CPU tensor in, CPU tensor out."""

    def __init__(self, path: str):
        super().__init__()
        from sparsekern.pruning.surgery.export import onnx_file

        self._onnx_file, self.metadata = onnx_file, onnx_file.onnx_metadata(path)
        self.session = onnx_file.session(path)

    def forward(self, x: Tensor) -> Tensor:
        return self._onnx_file.run(self.session, x)


def sniff_format(path: str) -> str:
    """``safetensors``, ``torch`` (a zip written by torch.save) or ``onnx`` (anything else is tried as ONNX)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportFileError(f"{path!r}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return "safetensors"
    return "onnx"


def load_exported(path: str) -> nn.Module:
    """The model of a ``safetensors``, ``sparse`` or ``onnx`` export (a ``state_dict`` export has no
    architecture in it: load it into ``sparsekern.cli.export.finalized_architecture(run_dir)``)."""
    kind = sniff_format(path)
    if kind == "safetensors":
        from sparsekern.pruning.surgery.export.safetensors_file import load_safetensors
        return load_safetensors(path)
    if kind == "torch":
        from sparsekern.pruning.surgery.export.sparse_file import load_sparse
        return load_sparse(path)
    return OnnxModel(path).eval()
