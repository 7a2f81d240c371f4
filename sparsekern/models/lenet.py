"""LeNet-300-100 (an MLP) and LeNet-5-Caffe (20-50-800-500), sized for any input."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def lenet300(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    features = in_channels * image_size[0] * image_size[1]
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(features, 300)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, num_classes)),
    ]))


class LeNet5(nn.Module):
    """LeNet-5-Caffe; inputs smaller than 16x16 get 'same' padding so the two pools still fit."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        pad = 2 if min(image_size) < 16 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, *image_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def lenet5(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size)
