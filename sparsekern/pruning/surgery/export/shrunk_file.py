"""``save_shrunk`` / ``load_shrunk``: a shrunk model of the user's own class, saved and reloaded.

A user's ``nn.TransformerEncoder`` model has no config to rebuild it with fewer heads and
neurons (Hugging Face models: ``hf_pretrained``; built-in models: the export metadata). So the
file holds the weights and what ``finalize`` changed: ``sparsekern_shapes`` ({layer: [in, out]}),
``sparsekern_heads`` ({attention: [heads, head_dim]}) and the torch attentions that became
``HeadPrunableMultiheadAttention``. ``load_shrunk(model, path)`` takes the freshly built dense
model (the user's constructor, as for ``load_state_dict``), makes those attentions head-prunable,
resizes those layers and loads the weights. Format: safetensors when the package is installed
(raw bytes, no code runs on load), else a torch file read with ``weights_only=True``; written
atomically. Any failure is an ``ExportFileError`` (a ValueError) naming the file, and the model
passed in is left as it was (the work is done on a copy).
"""
from __future__ import annotations

import copy
import io
import json
import os

import torch
from torch import nn

from sparsekern.nn.head_attention import HeadPrunableMultiheadAttention, unsupported
from sparsekern.pruning.surgery.attention import protect_attention
from sparsekern.pruning.surgery.export.files import ExportFileError, atomic_write_bytes, metadata_from_json
from sparsekern.pruning.surgery.export.load import sniff_format

SHRUNK_VERSION = 1
FILE_KEY = "sparsekern_shrunk"  # the torch file's metadata key (safetensors: export.files.METADATA_KEY)
FORMATS = ("safetensors", "torch")


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def save_shrunk(model: nn.Module, path: str, *, format: str | None = None) -> None:
    """Write ``model`` (what ``finalize`` returned for a gated transformer) to ``path``: its
    state_dict and its shrink record (module docstring). ``format``: ``safetensors`` (default when
    installed) or ``torch``."""
    format = format or ("safetensors" if _has_safetensors() else "torch")
    if format not in FORMATS:
        raise ValueError(f"save_shrunk: format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "sparsekern_shapes", None), dict):
        raise ValueError("save_shrunk: model is not shrunk; pass the model finalize() returned")
    meta = {FILE_KEY: SHRUNK_VERSION, "shapes": model.sparsekern_shapes,
            "heads": getattr(model, "sparsekern_heads", {}),
            "attentions": [n for n, m in model.named_modules() if isinstance(m, HeadPrunableMultiheadAttention)]}
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if format == "safetensors":
        from sparsekern.pruning.surgery.export.safetensors_file import save_safetensors
        save_safetensors(state, meta, path)
        return
    buf = io.BytesIO()
    torch.save({FILE_KEY: json.dumps(meta), "state_dict": state}, buf)
    atomic_write_bytes(buf.getvalue(), path)


def _read(path: str) -> tuple[dict, dict]:
    kind = sniff_format(path)  # ExportFileError if there is no such file
    if kind == "safetensors":
        from sparsekern.pruning.surgery.export.safetensors_file import read_safetensors
        state, meta = read_safetensors(path)
    elif kind == "torch":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
            raise ExportFileError(f"{path!r} is corrupt or not a torch file ({str(e).splitlines()[0][:200]})") from e
        if not (isinstance(obj, dict) and isinstance(obj.get(FILE_KEY), str)
                and isinstance(obj.get("state_dict"), dict)):
            raise ExportFileError(f"{path!r} was not written by save_shrunk")
        state, meta = obj["state_dict"], metadata_from_json(obj[FILE_KEY], path)
    else:
        raise ExportFileError(f"{path!r} is neither a safetensors nor a torch file written by save_shrunk")
    if meta.get(FILE_KEY) != SHRUNK_VERSION or not all(isinstance(meta.get(k), t) for k, t in
                                                       (("shapes", dict), ("heads", dict), ("attentions", list))):
        raise ExportFileError(f"{path!r} has no save_shrunk record of version {SHRUNK_VERSION}")
    return state, meta


def _module(model: nn.Module, name: str, path: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ExportFileError(f"{path!r}: the model has no module {name!r} (build it with the constructor of the "
                              "saved model)") from None


def load_shrunk(model: nn.Module, path: str) -> nn.Module:
    """The shrunk model saved at ``path``, rebuilt from ``model`` (a freshly built dense model of the
    saved model's class and arguments; it is not changed): attentions made head-prunable with the
    recorded head counts, layers resized, weights loaded; in eval mode."""
    path = os.fspath(path)
    state, meta = _read(path)
    out = copy.deepcopy(model)
    for name in meta["attentions"]:
        mha = _module(out, name, path)
        why = None if isinstance(mha, HeadPrunableMultiheadAttention) else unsupported(mha)
        if why is not None:
            raise ExportFileError(f"{path!r}: module {name!r} {why}")
        HeadPrunableMultiheadAttention.convert(mha)
    for name, heads in meta["heads"].items():
        mha = _module(out, name, path)
        if not isinstance(mha, HeadPrunableMultiheadAttention):
            raise ExportFileError(f"{path!r}: module {name!r} is not an attention the file records")
        mha.num_heads, mha.head_dim = int(heads[0]), int(heads[1])
    for name, (n_in, n_out) in meta["shapes"].items():
        old = _module(out, name, path)
        if not isinstance(old, nn.Linear):  # (a Hugging Face model: save_shrunk_pretrained)
            raise ExportFileError(f"{path!r}: module {name!r} is a {type(old).__name__}, the file records a Linear")
        parent, _, key = name.rpartition(".")
        new = nn.Linear(int(n_in), int(n_out), bias=old.bias is not None, device=old.weight.device,
                        dtype=old.weight.dtype)
        setattr(out.get_submodule(parent) if parent else out, key, new)
    try:
        out.load_state_dict(state)
    except RuntimeError as e:
        raise ExportFileError(f"{path!r}: the weights do not fit this model ({' '.join(str(e).split()[:40])})") from e
    protect_attention(out)  # an encoder of head-prunable attentions must not pack nested tensors
    out.sparsekern_shapes, out.sparsekern_heads = meta["shapes"], meta["heads"]
    return out.eval()
