"""Model zoo for the pruning pipeline: ``build_model(name, num_classes, in_channels, image_size)``.

Built in (each with ``gate_sites()`` and ``widths``, see ``models.sites``):
``lenet300`` (LeNet-300-100), ``lenet5`` (LeNet-5-Caffe), ``vgg16``,
``resnet20``, ``resnet56`` (CIFAR-style, any input >= 4x4, e.g. 1x8x8 digits or
3x32x32 CIFAR); ``transformer`` (token ids [N, T]: ``in_channels`` is the vocabulary size,
``image_size`` the sequence length T or (1, T); ``widths`` heads and FFN neurons per layer,
see ``models.transformer``; it takes ``seq_rule``-style classification data); any other
name is looked up in torchvision when it is installed.

Token sequences (data with a ``task``, ``sparsekern.data.sequences``): ``hf:<config.json or dir>``
(``models.hf``) or a name in ``TOKEN_MODELS``. ``build_for_data(name, info)`` picks the builder
from the data: the trainer and ``sparsekern export`` call only it.
"""
from __future__ import annotations

from torch import nn

from sparsekern.models.hf import check_hf_name, hf_model, is_hf_name, load_config
from sparsekern.models.lenet import lenet5, lenet300
from sparsekern.models.resnet import resnet20, resnet56
from sparsekern.models.transformer import transformer
from sparsekern.models.tv import check_torchvision_name, torchvision_model
from sparsekern.models.vgg import vgg16

MODELS = {"lenet300": lenet300, "lenet5": lenet5, "vgg16": vgg16, "resnet20": resnet20, "resnet56": resnet56,
          "transformer": transformer}

SEQUENCE_MODELS = ("transformer",)  # token ids [N, T] in; the others take images [N, C, H, W]
IMAGE_MODELS = tuple(name for name in MODELS if name not in SEQUENCE_MODELS)


def _token_transformer(info: dict, widths) -> nn.Module:
    if info["task"] != "classification":
        raise ValueError(f"model 'transformer' is a sequence classifier; data {info['name']!r} is {info['task']}: "
                         "use hf:<config.json or dir> for causal LM")
    return build_model("transformer", info["num_classes"], info["vocab_size"], info["seq_len"], widths=widths)


# Built-in models over token ids [B, T] -> logits: name -> builder(info, widths) (``info``: the data's,
# with task, vocab_size, seq_len, num_classes).
TOKEN_MODELS: dict = {"transformer": _token_transformer}


def check_model_name(name: str) -> None:
    """ValueError listing the built-in names unless ``name`` is built in or a torchvision model."""
    if not isinstance(name, str):
        raise TypeError(f"model must be a str, got {type(name).__name__}")
    if is_hf_name(name):
        check_hf_name(name)
    elif name not in MODELS and name not in TOKEN_MODELS:
        check_torchvision_name(name, MODELS)


def build_model(name: str, num_classes: int, in_channels: int, image_size, *, widths=None) -> nn.Module:
    """A freshly initialised classifier for inputs [N, in_channels, *image_size].

    ``widths``: one int per gate site of a built-in model (``model.gate_sites()``), the kept
    channels of a shrunk model (``summary.json``'s ``widths``); None: the full widths."""
    if not isinstance(name, str):
        raise TypeError(f"build_model: name must be a str, got {type(name).__name__}")
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"build_model: {arg} must be a positive int, got {v!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"build_model: image_size must be an int or (H, W) of positive ints, got {image_size!r}")
    if name in MODELS:
        if name not in ("lenet300", "transformer") and min(size) < 4:
            raise ValueError(f"build_model: {name} needs images of at least 4x4, got {size}")
        return MODELS[name](num_classes, in_channels, size, widths)
    if widths is not None:
        raise ValueError(f"build_model: widths apply only to the built-in models ({', '.join(MODELS)}), not {name!r}")
    check_model_name(name)
    return torchvision_model(name, num_classes, in_channels)


def check_for_data(name: str, info: dict) -> None:
    """Before a run directory is made: ValueError in one line unless ``name`` can take the data ``info``
    describes (images vs token sequences; an hf: config's task, vocabulary and positions)."""
    check_model_name(name)
    tokens = info.get("task") in ("classification", "causal_lm")
    if is_hf_name(name) and tokens:
        load_config(name, info)
    elif is_hf_name(name) or tokens != (name in TOKEN_MODELS):
        _wrong_input(name, info)


def _wrong_input(name: str, info: dict):
    if info.get("task") in ("classification", "causal_lm"):
        choices = ", ".join(["hf:<config.json or dir>", *TOKEN_MODELS])
        raise ValueError(f"model {name!r} takes images, but data {info['name']!r} is token sequences "
                         f"({info['task']}); use {choices}")
    raise ValueError(f"model {name!r} takes token sequences, but data {info['name']!r} is images; "
                     "use a sequence set (seq_rule, seq_lm, a .npz with tokens)")


def build_for_data(name: str, info: dict, *, widths=None, pretrained: bool = True) -> nn.Module:
    """A fresh model for the data ``info`` describes (``load_dataset``'s): images go to ``build_model``,
    token sequences to ``hf:`` or ``TOKEN_MODELS``. ``pretrained=False``: an hf: directory's weights
    are not loaded (the architecture an export loads into)."""
    tokens = info.get("task") in ("classification", "causal_lm")
    if is_hf_name(name):
        if not tokens:
            _wrong_input(name, info)
        if widths is not None:
            raise ValueError(f"build_model: widths do not apply to {name!r}")
        return hf_model(name, info, pretrained=pretrained)
    if tokens != (name in TOKEN_MODELS):
        _wrong_input(name, info)
    if tokens:
        return TOKEN_MODELS[name](info, widths)
    return build_model(name, info["num_classes"], info["in_channels"], info["image_size"], widths=widths)


__all__ = ["IMAGE_MODELS", "MODELS", "SEQUENCE_MODELS", "TOKEN_MODELS", "build_for_data", "build_model", "check_for_data", "check_model_name"]
