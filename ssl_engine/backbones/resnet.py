"""torchvision ResNets as backbones (He et al. 2016), with a small-image stem.

For inputs of 64 px and under, the 7x7 stride-2 stem and its max-pool would shrink a 32 px image to 8 px before
the first residual stage; as is usual for CIFAR-sized data (SimCLR's CIFAR setup, Chen et al. 2020), the stem is
then a 3x3 stride-1 convolution without max-pool, so the feature map is ``H/8`` instead of ``H/32``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from ssl_engine.backbones.base import Backbone

SMALL_IMAGE_MAX = 64


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier: ``(N, C, H, W)`` -> ``(N, D, H/s, W/s)``.

    ``D`` is 512 for ResNet-18/34 and 2048 for ResNet-50; ``s`` is 32, or 8 with the small-image stem.

    Args:
        builder: ``torchvision.models.resnet18`` or a sibling (weights are never downloaded).
        in_channels: input channels.
        image_size: the training image size; at most :data:`SMALL_IMAGE_MAX` selects the small stem.
    """

    def __init__(self, builder: Callable[..., torchvision.models.ResNet], in_channels: int, image_size: int) -> None:
        super().__init__()
        net = builder(weights=None)
        small = image_size <= SMALL_IMAGE_MAX
        if small:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.feature_dim = net.fc.in_features
        self.stride = 8 if small else 32
        self.architecture = builder.__name__
        self.small_stem = small

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))
