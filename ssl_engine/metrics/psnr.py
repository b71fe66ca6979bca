"""Peak signal-to-noise ratio in dB on images in [0, 1]: of whole images (the usual super-resolution score) and
of masked pixels only (an inpainted hole)."""

from __future__ import annotations

import torch

# A perfect reconstruction would give infinite PSNR; clamping the error keeps the metric finite (100 dB).
MIN_ERROR = 1e-10


def psnr(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR of each image, averaged over the batch.

    Args:
        predicted: ``(B, C, H, W)`` in [0, 1] (clamp first: a real image can't leave the range).
        target: ``(B, C, H, W)`` in [0, 1].

    Returns:
        A detached scalar, ``mean_b 10 * log10(1 / mse_b)`` with ``mse_b`` the mean squared error of image ``b``.
    """
    error = (predicted.detach() - target).square().mean(dim=(1, 2, 3))  # (B,)
    return (-10 * torch.log10(error.clamp(min=MIN_ERROR))).mean()


def masked_psnr(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR of each image over its masked pixels, averaged over the batch.

    Args:
        predicted: ``(B, C, H, W)`` in [0, 1] (clamp first: a real image can't leave the range).
        target: ``(B, C, H, W)`` in [0, 1].
        mask: ``(B, 1, H, W)`` bool, the pixels compared (at least one per image).

    Returns:
        A detached scalar, ``mean_b 10 * log10(1 / mse_b)`` with ``mse_b`` the mean squared error over image
        ``b``'s masked pixels and all channels.
    """
    weights = mask.to(predicted.dtype)
    squared = (predicted.detach() - target).square().sum(dim=1, keepdim=True)  # (B, 1, H, W), summed over C
    error = (squared * weights).sum(dim=(1, 2, 3)) / (predicted.shape[1] * weights.sum(dim=(1, 2, 3)).clamp(min=1))
    return (-10 * torch.log10(error.clamp(min=MIN_ERROR))).mean()
