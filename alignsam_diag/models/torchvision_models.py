"""torchvision ImageNet architectures, adapted to the data's channels, classes and image size.

``small_input`` swaps the ImageNet stem (7×7 stride-2 conv + max-pool, or EfficientNet's
stride-2 3×3 conv) for a stride-1 3×3 conv, the usual CIFAR-size adaptation. The ResNets keep
torchvision's stem unless asked (on digits and Fashion-MNIST they train better with it: ResNet-50's
epoch-1 loss on digits is 0.98 with it and 2.51 with the small stem, ResNet-18's on Fashion-MNIST
1.92 against 2.07, and 10× faster). For DenseNet and EfficientNet, left unset (None) it is
chosen from the image size: on under :data:`SMALL_IMAGE` pixels (digits' 8×8, Fashion-MNIST's
28×28, where the ImageNet stem leaves too little to pool — densenet121 cannot take them at all),
off from 32 px up (CIFAR and ImageNet, as torchvision builds them). The choice depends only on
the stored model spec, so a checkpoint rebuilds the same network.

Residual branches start at zero (the last BatchNorm of each block has γ = 0: torchvision's
``zero_init_residual`` for ResNets, the same for EfficientNet's residual MBConv blocks) and
EfficientNet's classifier starts at zero, so every block is the identity at initialisation
(Goyal et al. 2017). Without it ResNet-50 and the EfficientNets start far above chance (epoch-1
loss 6–20) under the default lr 0.1; see ``benchmarks/default_convergence.py``. Only the
initialisation changes, so stored weights load as before.

Weights are random: pretrained weights come in through checkpoints (``inspect``/``--arch``),
never from a hub at run time.
"""

from __future__ import annotations

from typing import Callable, Optional

import torchvision
from torch import nn
from torchvision.models.efficientnet import MBConv

SMALL_IMAGE = 32  # images under this many pixels a side get the small stem by default


def _small(small_input: Optional[bool], image_size: int) -> bool:
    return image_size < SMALL_IMAGE if small_input is None else small_input


def _conv_like(old: nn.Conv2d, in_channels: int, small_input: bool) -> nn.Conv2d:
    if small_input:
        return nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=old.bias is not None)
    return nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                     bias=old.bias is not None)


def _resnet(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int, small_input: bool = False) -> nn.Module:
        model = factory(num_classes=num_classes, zero_init_residual=True)
        if small_input or in_channels != 3:
            model.conv1 = _conv_like(model.conv1, in_channels, small_input)
        if small_input:
            model.maxpool = nn.Identity()
        return model
    build.__doc__ = f"torchvision {factory.__name__} (``small_input``: 3×3 stride-1 stem, no max-pool)."
    return build


def densenet121(num_classes: int, in_channels: int, image_size: int, small_input: Optional[bool] = None) -> nn.Module:
    """torchvision densenet121 (``small_input``: 3×3 stride-1 stem, no max-pool; default: under 32 px)."""
    small = _small(small_input, image_size)
    model = torchvision.models.densenet121(num_classes=num_classes)
    if small or in_channels != 3:
        model.features.conv0 = _conv_like(model.features.conv0, in_channels, small)
    if small:
        model.features.pool0 = nn.Identity()
    return model


def _efficientnet(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int, small_input: Optional[bool] = None) -> nn.Module:
        small = _small(small_input, image_size)
        model = factory(num_classes=num_classes)
        stem = model.features[0][0]
        if small or in_channels != 3:
            model.features[0][0] = _conv_like(stem, in_channels, small)
        for block in model.modules():
            if isinstance(block, MBConv) and block.use_res_connect:
                nn.init.zeros_(block.block[-1][1].weight)  # the projection's BatchNorm γ
        head = model.classifier[-1]
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return model
    build.__doc__ = (f"torchvision {factory.__name__} (``small_input``: stride-1 stem; default: under "
                     f"{SMALL_IMAGE} px).")
    return build


resnet18 = _resnet(torchvision.models.resnet18)
resnet34 = _resnet(torchvision.models.resnet34)
resnet50 = _resnet(torchvision.models.resnet50)
efficientnet_b2 = _efficientnet(torchvision.models.efficientnet_b2)
efficientnet_b3 = _efficientnet(torchvision.models.efficientnet_b3)
efficientnet_b4 = _efficientnet(torchvision.models.efficientnet_b4)
