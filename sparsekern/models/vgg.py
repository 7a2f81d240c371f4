"""VGG-16 with BatchNorm, the CIFAR variant (13 convs, one linear classifier).

Gate sites (SPEC 3): every conv, as conv -> BN -> gate -> ReLU.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from sparsekern.models.sites import GateSite, check_widths

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], plan=VGG16, widths=None):
        super().__init__()
        convs = check_widths("vgg16", widths, [c for c in plan if c != "M"])
        layers, channels, size, k, p = OrderedDict(), in_channels, min(image_size), 0, 0
        for item in plan:
            if item == "M":
                if size >= 2:  # small inputs (8x8 digits) skip the pools that would empty the map
                    p += 1
                    layers[f"pool{p}"] = nn.MaxPool2d(2)
                    size //= 2
                continue
            k += 1
            width = convs[k - 1]
            layers[f"conv{k}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
            layers[f"bn{k}"] = nn.BatchNorm2d(width)
            layers[f"gate{k}"] = nn.Identity()
            layers[f"relu{k}"] = nn.ReLU()
            channels = width
        self.num_convs = k
        # Dep-L0's generator input, in both directions: the reference code's VGG feeds ones(64),
        # its first conv's width, also to the backward chain (its ResNets use the chain's first width)
        self.generator_input_width = convs[0]
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def gate_sites(self) -> list[GateSite]:
        n = self.num_convs
        return [GateSite(f"features.gate{k}", f"features.conv{k}", f"features.bn{k}",
                         (f"features.conv{k + 1}" if k < n else "classifier",)) for k in range(1, n + 1)]


def vgg16(num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None) -> nn.Module:
    return VGG(num_classes, in_channels, image_size, widths=widths)
