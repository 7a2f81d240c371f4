"""Hugging Face models from a local config: ``--model hf:<config.json or directory>`` (issue 19).

Nothing is downloaded. A directory that also holds weights (``model.safetensors`` or
``pytorch_model.bin``, what ``save_pretrained`` writes) starts from them; otherwise the model is
initialised at random from the config. The task comes from the data: classification builds
``AutoModelForSequenceClassification`` with ``num_labels`` set to the data's classes, causal LM
``AutoModelForCausalLM``. transformers is imported only here, and only for ``hf:`` models.
"""
from __future__ import annotations

import json
import os

from torch import nn

PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TASK_WORDS = {"classification": "sequence classification", "causal_lm": "causal language modelling"}
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}


def is_hf_name(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def config_path(name: str) -> str:
    """The config.json of ``hf:<path>``; FileNotFoundError / ValueError naming the model otherwise."""
    path = name[len(PREFIX):]
    if not path:
        raise ValueError(f"model {name!r}: give a config.json or a directory holding one after 'hf:'")
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        where = f"directory {path!r} has no config.json" if os.path.isdir(path) else f"no such file {path!r}"
        raise FileNotFoundError(f"model {name!r}: {where}")
    return file


def check_hf_name(name: str) -> None:
    """The config exists and is a JSON model config (has ``model_type``), before any run directory is made."""
    _read_config_dict(name)


def _read_config_dict(name: str) -> dict:
    file = config_path(name)
    try:
        with open(file) as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"model {name!r}: {file!r} is not JSON ({' '.join(str(e).split())[:120]})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ValueError(f"model {name!r}: {file!r} is not a Hugging Face model config (no \"model_type\")")
    return raw


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ValueError("hf: models need the transformers package: pip install transformers "
                         "(or sparsekern's [hf] extra)") from e
    transformers.logging.set_verbosity_error()  # "newly initialized weights" notes are expected here
    transformers.logging.disable_progress_bar()  # save_pretrained's shard bar: noise in a run's output
    return transformers


def load_config(name: str, info: dict, raw: dict | None = None):
    """The transformers config of ``hf:<path>`` (or of ``raw``, its config.json as a dict), fitted to
    the data: ``num_labels`` for classification; ValueError in one line if the vocabulary or
    positions are too small for the data."""
    raw = _read_config_dict(name) if raw is None else raw
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.for_model(**raw)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"model {name!r}: transformers does not know config model_type "
                         f"{raw['model_type']!r} ({' '.join(str(e).split())[:160]})") from e
    check_task(name, config.model_type, info)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < info["vocab_size"]:
        raise ValueError(f"model {name!r}: its vocab_size {vocab} is smaller than data {info['name']!r}'s "
                         f"vocabulary of {info['vocab_size']} tokens")
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions < info["seq_len"]:
        raise ValueError(f"model {name!r}: its max_position_embeddings {positions} is shorter than data "
                         f"{info['name']!r}'s sequences of {info['seq_len']} tokens")
    if info["task"] == "classification":
        config.num_labels = info["num_classes"]
    return config


def check_task(name: str, model_type: str, info: dict) -> None:
    """ValueError unless transformers has a model of the data's task for this config type (a ViT config
    has no sequence classifier; BERT's causal LM is a decoder variant, so it is allowed)."""
    from transformers.models.auto import modeling_auto

    names = (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES if info["task"] == "classification"
             else modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if model_type not in names:
        raise ValueError(f"model {name!r}: a {model_type!r} config has no {TASK_WORDS[info['task']]} model in "
                         f"transformers, which data {info['name']!r} ({info['task']}) needs")


def has_weights(name: str) -> bool:
    path = name[len(PREFIX):]
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES)


def hf_model(name: str, info: dict, *, pretrained: bool = True, raw: dict | None = None) -> nn.Module:
    """``AutoModelFor<task>`` of ``hf:<path>`` for the data described by ``info`` (see the module docstring);
    ``pretrained=False``: a fresh model of the config even if the directory holds weights. ``raw``: the
    config.json as a dict instead of the file (an export's metadata; then nothing is read from disk).
    A shrunk model's config (``sparsekern_shapes``) gives the shrunk shapes."""
    config = load_config(name, info, raw)
    pretrained = pretrained and raw is None
    transformers = _transformers()
    auto = getattr(transformers, AUTO_CLASSES[info["task"]])
    shrunk = bool(getattr(config, "sparsekern_shapes", None) or getattr(config, "sparsekern_heads", None))
    try:
        if pretrained and has_weights(name) and not shrunk:
            return auto.from_pretrained(name[len(PREFIX):], config=config, ignore_mismatched_sizes=True)
        model = auto.from_config(config)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ValueError(f"model {name!r}: a {config.model_type!r} config has no {TASK_WORDS[info['task']]} model "
                         "in transformers, "
                         f"which data {info['name']!r} ({info['task']}) needs") from e
    if shrunk:  # a directory save_shrunk_pretrained wrote: the stock class has the dense shapes
        from sparsekern.models.hf_resize import resize_to_config

        resize_to_config(model, config)
        if pretrained and has_weights(name):
            _load_shrunk_weights(model, name)
    return model


def _load_shrunk_weights(model: nn.Module, name: str) -> None:
    """The weights of a shrunk model's directory (``model.safetensors``, which save_shrunk_pretrained
    writes), as ``from_pretrained(ignore_mismatched_sizes=True)`` would load them: a tensor whose
    shape differs (a classifier for another number of classes) keeps its fresh initialisation."""
    from safetensors.torch import load_file

    file = os.path.join(name[len(PREFIX):], "model.safetensors")
    if not os.path.isfile(file):
        raise ValueError(f"model {name!r}: a shrunk model's weights must be in model.safetensors (as "
                         "save_shrunk_pretrained writes them)")
    try:
        saved = load_file(file)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"model {name!r}: cannot read {file!r} ({' '.join(str(e).split())[:120]})") from e
    own = model.state_dict()
    unknown = sorted(set(saved) - set(own))
    if unknown:
        raise ValueError(f"model {name!r}: {file!r} holds tensors the model lacks: {unknown[:3]}")
    fitting = {k: v for k, v in saved.items() if v.shape == own[k].shape}
    params = dict(model.named_parameters(remove_duplicate=False))
    aliases: dict[int, list[str]] = {}  # tied weights (lm_head = embedding) are in the file once
    for k, p in params.items():
        aliases.setdefault(id(p), []).append(k)
    missing = [k for k in own if k not in saved and not (k in params and any(a in saved for a in aliases[id(params[k])]))]
    if missing:
        raise ValueError(f"model {name!r}: {file!r} lacks {missing[:3]}")
    model.load_state_dict(fitting, strict=False)
