"""The built-in ResNet-50 that stands in for torchvision's where torchvision is missing (issue 18:
the lent GPU machines have no torchvision, and bench/gpu_run.sh trains ResNet-50)."""
from __future__ import annotations

import pytest
import torch

from sparsekern.models import build_model, check_model_name
from sparsekern.models.resnet50 import ResNet50


def test_resnet50_has_torchvisions_size_and_names():
    model = ResNet50()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    keys = model.state_dict().keys()
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.bias"} <= set(keys)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)  # v1.5


def test_resnet50_matches_torchvision_when_installed():
    tvm = pytest.importorskip("torchvision.models")
    ours, theirs = ResNet50().state_dict(), tvm.resnet50(weights=None).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]


def test_build_model_resnet50_without_torchvision(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    check_model_name("resnet50")
    model = build_model("resnet50", num_classes=10, in_channels=1, image_size=32)
    assert isinstance(model, ResNet50) and model.fc.out_features == 10 and model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="torchvision is not installed"):
        check_model_name("resnet18")
