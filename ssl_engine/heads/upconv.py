"""A decoder head on the backbone's spatial feature map (the up-convolutional decoder of Pathak et al. 2016)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_engine.settings import SettingError


class UpConvDecoder(nn.Module):
    """``(N, C, h, w)`` -> ``(N, out_channels, h * scale, w * scale)``; ``scale`` must be a power of 2.

    Each stage doubles the resolution (nearest upsampling, 3x3 conv, BN, ReLU) and halves the channels (at least
    32); a final 3x3 conv gives the output channels.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        stages = int(math.log2(scale)) if scale > 1 else 0
        if 2**stages != scale:
            # The user's choice of backbone, not a bug: refused before training like a bad setting (exit 2).
            raise SettingError(
                f"the up-convolutional decoder upsamples by doubling, so its scale (the backbone's stride, {scale} "
                "here, over the output's) must be a power of 2; choose a backbone whose stride is one (for a ViT, "
                "a patch of 2, 4, 8 or 16: --backbone timm:NAME?patch_size=4)"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(stages):
            next_channels = max(32, channels // 2)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, next_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(next_channels),
                nn.ReLU(inplace=True),
            ]
            channels = next_channels
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
