"""The low-resolution inputs of super-resolution: bicubic down- and back up-sampling of the whole batch.

Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network" (CVPR),
Sec. 3.1: the low-resolution images are the high-resolution ones downsampled with a bicubic kernel by a factor
``r = 4``. SRGAN's generator upsamples them itself (sub-pixel convolutions); here, as in SRCNN (Dong et al.
2014) and VDSR (Kim et al. 2016), the encoder sees them brought back to full size bicubically, so the shared
backbone runs at the image size every other task uses and the network only has to predict the lost detail.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def low_resolution_size(image_size: int, factor: int) -> int:
    """Side of the downsampled image: ``round(S / factor)``, at least 1 px."""
    return max(1, round(image_size / factor))


def bicubic_degrade(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample by ``factor`` and upsample back, both bicubic, for every image at once.

    Downsampling is antialiased (the bicubic kernel widened by the factor, as PIL and MATLAB's ``imresize``
    do), else it would alias instead of blur. Both results are clamped to [0, 1], as a stored image would be.

    Args:
        images: ``(B, C, H, W)`` float in [0, 1].
        factor: the downsampling factor ``r``.

    Returns:
        ``(B, C, H, W)`` in [0, 1]: the detail finer than ``factor`` px is gone.
    """
    height, width = images.shape[-2:]
    small = (low_resolution_size(height, factor), low_resolution_size(width, factor))
    low = F.interpolate(images, size=small, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
