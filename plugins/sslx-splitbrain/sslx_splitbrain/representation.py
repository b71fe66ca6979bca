"""The split-brain representation: both sub-networks' pooled features, concatenated.

Zhang, Isola & Efros 2017, "Split-Brain Autoencoders" (CVPR), Sec. 3.2: "By concatenating the representations
layer-wise, F = {F1, F2}, we achieve a representation F which is pretrained on full input tensor X."
"""

from __future__ import annotations

import torch

from ssl_engine import api


class SplitBrainRepresentation(api.Representation):
    """RGB images in [0, 1] -> ``[F1(L), F2(ab)]``, ``(B, 3, H, W)`` -> ``(B, D1 + D2)``.

    Args:
        lightness_backbone: ``F1``, the shared backbone slot, fed the lightness as a normalised gray image.
        color_backbone: ``F2``, fed the two ab channels (Lab units / 10).
    """

    def __init__(self, lightness_backbone: api.Backbone, color_backbone: api.Backbone) -> None:
        super().__init__(lightness_backbone)
        self.color_backbone = color_backbone
        self.feature_dim = lightness_backbone.feature_dim + color_backbone.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lab = api.rgb_to_lab(images)  # (B, 3, H, W)
        lightness_features = self.backbone.pooled(api.lightness_input(lab))  # (B, D1)
        color_features = self.color_backbone.pooled(api.scale_ab(lab[:, 1:]))  # (B, D2)
        return torch.cat([lightness_features, color_features], dim=1)
