"""``--format onnx``: the finalized model as an ONNX graph (batch dimension dynamic), checked with
onnxruntime against PyTorch before the file is written.

Exporters: ``torchscript`` (torch.onnx's tracing exporter, ``dynamo=False``; deprecated since torch
2.9 but exact for every built-in model and 5-20x faster to run here) and ``dynamo`` (the
torch.export-based exporter, torch's default, needs onnxscript).
"""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from sparsekern.pruning.surgery.export.files import (METADATA_KEY, ExportFileError, atomic_write_bytes,
                                                     metadata_from_json)

EXPORTERS = ("torchscript", "dynamo")
RTOL, ATOL = 1e-4, 1e-5  # float32 graphs: onnxruntime's kernels sum in another order than ATen's


def _libraries():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError("the onnx format needs onnx and onnxruntime "
                          "(pip install 'sparsekern[export]' or pip install onnx onnxruntime)") from e
    return onnx, onnxruntime


def _export_bytes(model: nn.Module, example: Tensor, exporter: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes say nothing about the result
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            return buf.getvalue()
        try:
            import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
        except ImportError as e:
            raise ImportError("--onnx-exporter dynamo needs onnxscript (pip install onnxscript)") from e
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        return program.model_proto.SerializeToString()


def session(data_or_path):
    """An onnxruntime CPU session for ONNX bytes or a file path."""
    _, ort = _libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(data_or_path, options, providers=["CPUExecutionProvider"])


def run(sess, x: Tensor) -> Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy()})[0])


def check(sess, model: nn.Module, inputs: list[Tensor]) -> float:
    """Largest |onnxruntime - torch| over ``inputs``; ExportFileError when outside RTOL/ATOL."""
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x)
        got = run(sess, x)
        if got.shape != ref.shape:
            raise ExportFileError(f"onnx check failed: output shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                                  f"PyTorch gives {tuple(ref.shape)}")
        diff = float((got - ref).abs().max())
        worst = max(worst, diff)
        if not np.allclose(got.numpy(), ref.numpy(), rtol=RTOL, atol=ATOL * max(1.0, float(ref.abs().max()))):
            raise ExportFileError(f"onnx check failed: onnxruntime differs from PyTorch by up to {diff:.3g} on "
                                  f"a batch of {x.shape[0]} (tolerance rtol={RTOL}, atol={ATOL} x |logits|)")
    return worst


def export_onnx(model: nn.Module, example: Tensor, meta: dict, path: str, exporter: str = "torchscript",
                check_inputs: list[Tensor] | None = None) -> float:
    """Export, check on ``check_inputs`` (default: ``example``) and write ``path`` atomically; the
    largest difference found. Nothing is written when the check fails."""
    if exporter not in EXPORTERS:
        raise ValueError(f"onnx exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    onnx, _ = _libraries()
    model = model.eval()
    proto = onnx.load_model_from_string(_export_bytes(model, example, exporter))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**meta, "format": "onnx"})
    data = proto.SerializeToString()
    worst = check(session(data), model, check_inputs or [example])
    atomic_write_bytes(data, path)
    return worst


def onnx_metadata(path: str) -> dict:
    onnx, _ = _libraries()
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's decode errors have many types
        raise ExportFileError(f"{path!r} is not a readable ONNX file ({str(e).splitlines()[0][:200]})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportFileError(f"{path!r}: ONNX file without sparsekern metadata")
    return metadata_from_json(props[METADATA_KEY], repr(path))
