"""Small models for fast tests and the embedded default (digits)."""

from __future__ import annotations

import math

from torch import nn


def mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 128, depth: int = 2) -> nn.Module:
    """Flatten -> ``depth`` × (Linear(hidden) + ReLU) -> Linear(num_classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn_small(num_classes: int, in_channels: int, image_size: int, width: int = 32) -> nn.Module:
    """Two conv-BN-ReLU-pool stages (``width``, ``2*width`` channels) and a linear head.

    BatchNorm is included on purpose: it exercises every BN pitfall of SAM and Hessian code.
    """
    pooled = max(1, math.ceil(image_size / 4))
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(2 * width * pooled * pooled, num_classes),
    )
