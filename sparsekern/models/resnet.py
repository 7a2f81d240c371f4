"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, widths 16/32/64.

Shortcuts that change shape subsample and zero-pad channels (option A), so they
carry no weights; the maps work on any input of at least 4x4.
Gate sites (SPEC 3): the stem and the first conv of each basic block, as conv -> BN ->
ReLU -> gate; the residual width is never gated. A shrunk stem (fewer than 16 channels)
scatters its kept channels into the 16-wide residual stream (``stem_index``) and the first
block's conv1 reads only those (``in_index``), so no FLOP is spent on closed channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsekern.models.sites import GateSite, check_widths

STAGES = (16, 32, 64)


class PadShortcut(nn.Module):
    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra = stride, extra_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, width: int | None = None, inputs: int | None = None):
        super().__init__()
        width = planes if width is None else width
        if inputs is not None:  # reads only these channels of the stream (a shrunk stem's)
            self.register_buffer("in_index", torch.arange(inputs))
        self.conv1 = nn.Conv2d(in_planes if inputs is None else inputs, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.gate1 = nn.Identity()
        self.conv2 = nn.Conv2d(width, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        same_shape = stride == 1 and in_planes == planes
        self.shortcut = nn.Identity() if same_shape else PadShortcut(stride, planes - in_planes)

    def forward(self, x):
        h = x if getattr(self, "in_index", None) is None else x.index_select(1, self.in_index)
        out = self.gate1(F.relu(self.bn1(self.conv1(h))))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, widths=None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        plan = [(planes, stride if i == 0 else 1) for planes, stride in zip(STAGES, (1, 2, 2)) for i in range(n)]
        widths = check_widths(f"resnet{depth}", widths, [STAGES[0]] + [planes for planes, _ in plan])
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.gate = nn.Identity()
        if stem < STAGES[0]:
            self.register_buffer("stem_index", torch.arange(stem))
        blocks, in_planes = [], STAGES[0]
        for i, ((planes, stride), width) in enumerate(zip(plan, widths[1:])):
            inputs = stem if i == 0 and stem < STAGES[0] else None
            blocks.append(BasicBlock(in_planes, planes, stride, width, inputs))
            in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(STAGES[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.gate(F.relu(self.bn1(self.conv1(x))))
        if getattr(self, "stem_index", None) is not None:
            full = x.new_zeros((x.shape[0], STAGES[0]) + x.shape[2:])
            x = full.index_copy(1, self.stem_index, x)
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def gate_sites(self) -> list[GateSite]:
        sites = [GateSite("gate", "conv1", "bn1", ("layers.0.conv1",), ("stem_index", "layers.0.in_index"))]
        sites += [GateSite(f"layers.{i}.gate1", f"layers.{i}.conv1", f"layers.{i}.bn1", (f"layers.{i}.conv2",))
                  for i in range(len(self.layers))]
        return sites


def resnet20(num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels, widths)


def resnet56(num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels, widths)
