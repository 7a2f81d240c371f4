"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, widths 16/32/64.

Shortcuts that change shape subsample and zero-pad channels (option A), so they
carry no weights; the maps work on any input of at least 4x4.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra = stride, extra_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        same_shape = stride == 1 and in_planes == planes
        self.shortcut = nn.Identity() if same_shape else PadShortcut(stride, planes - in_planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


def resnet56(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)
