"""Any torchvision classification model by name (torchvision is optional; without it, the
models of ``BUILT_IN_FALLBACKS``: ResNet-50)."""
from __future__ import annotations

import importlib

import torch
from torch import nn


class BrokenTorchvision(ValueError):
    """torchvision is installed but does not import (a build for another torch)."""


def import_torchvision(module: str = "torchvision", *, needed_for: str):
    """``import module`` (torchvision or a submodule). ImportError when torchvision is not installed;
    a ``BrokenTorchvision`` one-liner when it is but fails to load: a build for another torch raises
    e.g. RuntimeError "operator torchvision::nms does not exist" at import."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of an installed torchvision's import
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise BrokenTorchvision(f"{needed_for} needs torchvision, which is installed but does not load with torch "
                                f"{torch.__version__} ({reason}); install the torchvision build that matches "
                                "your torch") from e


def check_torchvision_name(name: str, built_in) -> None:
    """ValueError naming the built-in models unless ``name`` is a torchvision classification model."""
    listing = f"built-in models: {', '.join(built_in)}"
    try:
        tvm = import_torchvision("torchvision.models", needed_for=f"model {name!r}")
    except ImportError as e:
        if name in BUILT_IN_FALLBACKS:
            return
        raise ValueError(f"model {name!r}: unknown ({listing}; other names are torchvision models, "
                         "and torchvision is not installed)") from e
    if name not in set(tvm.list_models(module=tvm)):
        raise ValueError(f"model {name!r}: unknown ({listing}; or a torchvision classification model "
                         "such as resnet50)")


def _resnet50(num_classes: int, in_channels: int) -> nn.Module:
    from sparsekern.models.resnet50 import ResNet50

    return ResNet50(num_classes, in_channels)


# torchvision models with an identical definition here, used when torchvision is not installed
BUILT_IN_FALLBACKS = {"resnet50": _resnet50}


def torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import torchvision.models as tvm  # check_torchvision_name ran first
    except ImportError:
        return BUILT_IN_FALLBACKS[name](num_classes, in_channels)
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups, child.bias is not None))
                return
