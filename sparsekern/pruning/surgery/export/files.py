"""What every export format shares: the architecture metadata that rebuilds the model, and atomic writes."""
from __future__ import annotations

import json

from torch import nn

from sparsekern.models import MODELS, TOKEN_MODELS, build_model
from sparsekern.models.hf import hf_model, is_hf_name
from sparsekern.pruning.atomic_files import atomic_write

EXPORT_VERSION = 1
METADATA_KEY = "sparsekern"  # the JSON metadata's key in a safetensors header / ONNX metadata_props
ARCH_KEYS = ("model", "num_classes", "in_channels", "image_size", "widths")
TOKEN_ARCH_KEYS = ("model", "num_classes", "task", "vocab_size", "seq_len", "widths")


class ExportFileError(ValueError):
    """An exported file is unreadable, corrupt, or not written by ``sparsekern export``."""


def architecture(config: dict, summary: dict) -> dict:
    """The metadata that rebuilds a run's finalized model (``build_architecture``) plus the input
    normalization it was trained with; KeyError naming what ``config`` lacks."""
    data = config["dataset"]
    if data.get("task"):  # token sequences: no image shape (a Hugging Face run adds its hf_config)
        return {"sparsekern_export": EXPORT_VERSION, "model": config["model"], "method": config.get("method"),
                "num_classes": data["num_classes"], "task": data["task"], "vocab_size": data["vocab_size"],
                "seq_len": data["seq_len"], "widths": summary.get("widths")}
    return {"sparsekern_export": EXPORT_VERSION, "model": config["model"], "method": config.get("method"),
            "num_classes": data["num_classes"], "in_channels": data["in_channels"],
            "image_size": list(data["image_size"]), "widths": summary.get("widths"),
            "normalization": data.get("normalization")}


def build_architecture(meta: dict, where: str) -> nn.Module:
    """A fresh plain model from export metadata; ExportFileError naming ``where`` if it is not valid."""
    if not isinstance(meta, dict) or meta.get("sparsekern_export") != EXPORT_VERSION:
        raise ExportFileError(f"{where}: no sparsekern export metadata of version {EXPORT_VERSION}")
    tokens = "task" in meta
    missing = [k for k in (TOKEN_ARCH_KEYS if tokens else ARCH_KEYS) if k not in meta]
    if missing:
        raise ExportFileError(f"{where}: export metadata lacks {', '.join(missing)}")
    hf = tokens and is_hf_name(meta["model"])
    if hf and not isinstance(meta.get("hf_config"), dict):
        raise ExportFileError(f"{where}: a Hugging Face model's export metadata lacks its config (hf_config)")
    # only built-in names and transformers' own classes: metadata never makes us import other code
    if not hf and meta["model"] not in (TOKEN_MODELS if tokens else MODELS):
        raise ExportFileError(f"{where}: model {meta['model']!r} is not a built-in model ({', '.join(MODELS)})")
    try:
        if hf:
            return hf_model(meta["model"], _token_info(meta), pretrained=False, raw=meta["hf_config"])
        if tokens:
            return TOKEN_MODELS[meta["model"]](_token_info(meta), meta["widths"])
        size = tuple(meta["image_size"])
        return build_model(meta["model"], meta["num_classes"], meta["in_channels"], size, widths=meta["widths"])
    except (TypeError, ValueError, KeyError) as e:
        raise ExportFileError(f"{where}: export metadata does not describe a model ({e})") from e


def _token_info(meta: dict) -> dict:
    """What a sequence model's builder reads of the data (``load_dataset``'s info)."""
    return {"name": "the exported model's data", **{k: meta[k] for k in ("task", "vocab_size", "seq_len", "num_classes")}}


def metadata_from_json(text, where: str) -> dict:
    try:
        meta = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ExportFileError(f"{where}: export metadata is not JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ExportFileError(f"{where}: export metadata is not a JSON object")
    return meta


def atomic_write_bytes(data: bytes, path: str) -> None:
    """``data`` to ``path`` atomically (``atomic_files.atomic_write``): a crash leaves the old file or
    the new one, never part of one; a failed write is a WriteError naming ``path``."""
    atomic_write(path, lambda f: f.write(data))
