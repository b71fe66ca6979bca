"""A small, fast convnet that pretrains in minutes on a laptop CPU."""

from __future__ import annotations

import torch
from torch import nn

from ssl_engine.backbones.base import Backbone


def _block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallConvNet(Backbone):
    """Four 3x3 conv-BN-ReLU stages (32, 64, 128, 256 channels), the last three stride 2.

    Input ``(N, C, H, W)`` with ``H, W >= 8`` -> features ``(N, 256, ceil(H/8), ceil(W/8))``. About 0.4M
    parameters and 15M multiply-adds per 32 px image; built for 16-96 px inputs on a CPU.

    Args:
        in_channels: input channels (3 for RGB).
        width: channels of the first stage; later stages double it.
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width, 1),
            _block(width, 2 * width, 2),
            _block(2 * width, 4 * width, 2),
            _block(4 * width, 8 * width, 2),
        )
        self.feature_dim = 8 * width
        self.stride = 8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)
