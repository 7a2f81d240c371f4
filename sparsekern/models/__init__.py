"""Model zoo for the pruning pipeline: ``build_model(name, num_classes, in_channels, image_size)``.

Built in (each with ``gate_sites()`` and ``widths``, see ``models.sites``):
``lenet300`` (LeNet-300-100), ``lenet5`` (LeNet-5-Caffe), ``vgg16``,
``resnet20``, ``resnet56`` (CIFAR-style, any input >= 4x4, e.g. 1x8x8 digits or
3x32x32 CIFAR); ``transformer`` (token ids [N, T]: ``in_channels`` is the vocabulary size,
``image_size`` the sequence length T or (1, T); ``widths`` heads and FFN neurons per layer,
see ``models.transformer``); any other name is looked up in torchvision when it is installed.
"""
from __future__ import annotations

from torch import nn

from sparsekern.models.lenet import lenet5, lenet300
from sparsekern.models.resnet import resnet20, resnet56
from sparsekern.models.transformer import transformer
from sparsekern.models.tv import check_torchvision_name, torchvision_model
from sparsekern.models.vgg import vgg16

MODELS = {"lenet300": lenet300, "lenet5": lenet5, "vgg16": vgg16, "resnet20": resnet20, "resnet56": resnet56,
          "transformer": transformer}

SEQUENCE_MODELS = ("transformer",)  # token ids [N, T] in; the others take images [N, C, H, W]
IMAGE_MODELS = tuple(name for name in MODELS if name not in SEQUENCE_MODELS)


def check_model_name(name: str) -> None:
    """ValueError listing the built-in names unless ``name`` is built in or a torchvision model."""
    if not isinstance(name, str):
        raise TypeError(f"model must be a str, got {type(name).__name__}")
    if name not in MODELS:
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


__all__ = ["IMAGE_MODELS", "MODELS", "SEQUENCE_MODELS", "build_model", "check_model_name"]
