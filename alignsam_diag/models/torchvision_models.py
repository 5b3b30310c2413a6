"""torchvision ImageNet architectures, adapted to the data's channels and classes.

``small_input=True`` swaps the ImageNet stem (7×7 stride-2 conv + max-pool, or EfficientNet's
stride-2 3×3 conv) for a stride-1 3×3 conv, the usual CIFAR-size adaptation. Weights are
random: pretrained weights come in through checkpoints (``inspect``/``--arch``), never from
a hub at run time.
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn


def _conv_like(old: nn.Conv2d, in_channels: int, small_input: bool) -> nn.Conv2d:
    if small_input:
        return nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=old.bias is not None)
    return nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                     bias=old.bias is not None)


def _resnet(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int, small_input: bool = False) -> nn.Module:
        model = factory(num_classes=num_classes)
        if small_input or in_channels != 3:
            model.conv1 = _conv_like(model.conv1, in_channels, small_input)
        if small_input:
            model.maxpool = nn.Identity()
        return model
    build.__doc__ = f"torchvision {factory.__name__} (``small_input``: 3×3 stride-1 stem, no max-pool)."
    return build


def densenet121(num_classes: int, in_channels: int, image_size: int, small_input: bool = False) -> nn.Module:
    """torchvision densenet121 (``small_input``: 3×3 stride-1 stem, no max-pool)."""
    model = torchvision.models.densenet121(num_classes=num_classes)
    if small_input or in_channels != 3:
        model.features.conv0 = _conv_like(model.features.conv0, in_channels, small_input)
    if small_input:
        model.features.pool0 = nn.Identity()
    return model


def _efficientnet(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int, small_input: bool = False) -> nn.Module:
        model = factory(num_classes=num_classes)
        stem = model.features[0][0]
        if small_input or in_channels != 3:
            model.features[0][0] = _conv_like(stem, in_channels, small_input)
        return model
    build.__doc__ = f"torchvision {factory.__name__} (``small_input``: stride-1 stem)."
    return build


resnet18 = _resnet(torchvision.models.resnet18)
resnet34 = _resnet(torchvision.models.resnet34)
resnet50 = _resnet(torchvision.models.resnet50)
efficientnet_b2 = _efficientnet(torchvision.models.efficientnet_b2)
efficientnet_b3 = _efficientnet(torchvision.models.efficientnet_b3)
efficientnet_b4 = _efficientnet(torchvision.models.efficientnet_b4)
