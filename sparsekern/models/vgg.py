"""VGG-16 with BatchNorm, the CIFAR variant (13 convs, one linear classifier)."""
from __future__ import annotations

from torch import nn

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], plan=VGG16):
        super().__init__()
        layers, channels, size = [], in_channels, min(image_size)
        for item in plan:
            if item == "M":
                if size >= 2:  # small inputs (8x8 digits) skip the pools that would empty the map
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    return VGG(num_classes, in_channels, image_size)
