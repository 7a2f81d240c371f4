"""LeNet-300-100 (an MLP) and LeNet-5-Caffe (20-50-800-500), sized for any input.

Gate sites (SPEC 3): every hidden neuron of LeNet-300-100; each conv and the hidden fc
layer of LeNet-5 (gates after the ReLU).
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekern.models.sites import GateSite, check_widths


class LeNet300(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None):
        super().__init__()
        h1, h2 = check_widths("lenet300", widths, [300, 100])
        self.flatten = nn.Flatten()
        features = in_channels * image_size[0] * image_size[1]
        self.fc1, self.relu1, self.gate1 = nn.Linear(features, h1), nn.ReLU(), nn.Identity()
        self.fc2, self.relu2, self.gate2 = nn.Linear(h1, h2), nn.ReLU(), nn.Identity()
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x):
        x = self.gate1(self.relu1(self.fc1(self.flatten(x))))
        return self.fc3(self.gate2(self.relu2(self.fc2(x))))

    def gate_sites(self) -> list[GateSite]:
        return [GateSite("gate1", "fc1", None, ("fc2",)), GateSite("gate2", "fc2", None, ("fc3",))]


class LeNet5(nn.Module):
    """LeNet-5-Caffe; inputs smaller than 16x16 get 'same' padding so the two pools still fit."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None):
        super().__init__()
        c1, c2, h = check_widths("lenet5", widths, [20, 50, 500])
        pad = 2 if min(image_size) < 16 else 0
        self.conv1, self.relu1, self.gate1 = nn.Conv2d(in_channels, c1, 5, padding=pad), nn.ReLU(), nn.Identity()
        self.conv2, self.relu2, self.gate2 = nn.Conv2d(c1, c2, 5, padding=pad), nn.ReLU(), nn.Identity()
        self.pool = nn.MaxPool2d(2)
        with torch.no_grad():
            self.spatial = self._features(torch.zeros(1, in_channels, *image_size)).numel() // c2
        self.fc1, self.relu3, self.gate3 = nn.Linear(c2 * self.spatial, h), nn.ReLU(), nn.Identity()
        self.fc2 = nn.Linear(h, num_classes)

    def _features(self, x):
        x = self.pool(self.gate1(self.relu1(self.conv1(x))))
        return self.pool(self.gate2(self.relu2(self.conv2(x))))

    def forward(self, x):
        x = self._features(x).flatten(1)
        return self.fc2(self.gate3(self.relu3(self.fc1(x))))

    def gate_sites(self) -> list[GateSite]:
        return [GateSite("gate1", "conv1", None, ("conv2",)), GateSite("gate2", "conv2", None, ("fc1",)),
                GateSite("gate3", "fc1", None, ("fc2",))]


def lenet300(num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None) -> nn.Module:
    return LeNet300(num_classes, in_channels, image_size, widths)


def lenet5(num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size, widths)
