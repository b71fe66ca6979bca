"""Gaussian blur with a different width for every image of the batch, as one grouped convolution.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (ICML), Appendix A:
on ImageNet, blur half the images with a Gaussian of standard deviation uniform in [0.1, 2.0] and a kernel 10% of
the image side; the paper leaves it out on CIFAR-10's 32 px images (Appendix B.9), as this task does by default.
Matches ``torchvision.transforms.functional.gaussian_blur`` (reflection padding) image by image.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

PAPER_SIGMA = (0.1, 2.0)


def kernel_size_for(image_size: int) -> int:
    """The paper's kernel: 10% of the image side, made odd, at least 3."""
    size = max(3, round(0.1 * image_size))
    return size if size % 2 else size + 1


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1-d Gaussian kernels: ``sigma`` ``(N,)`` -> ``(N, size)``."""
    half = (size - 1) / 2
    x = torch.linspace(-half, half, size, device=sigma.device, dtype=sigma.dtype)
    kernels = torch.exp(-0.5 * (x / sigma[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor, size: int) -> torch.Tensor:
    """Blur each chosen image with its own Gaussian (separable: a column pass, then a row pass).

    Args:
        images: ``(N, C, H, W)``, ``H`` and ``W`` larger than ``size // 2``.
        sigma: ``(N,)`` standard deviations in pixels.
        apply: ``(N,)`` bool; the other images pass unchanged.
        size: odd kernel side.

    Returns:
        ``(N, C, H, W)``.
    """
    count, channels, height, width = images.shape
    kernels = gaussian_kernels(sigma.to(images.dtype), size).repeat_interleave(channels, dim=0)  # (N*C, size)
    pad = size // 2
    # Every image-channel pair is its own group, so one convolution applies N different kernels.
    planes = F.pad(images.reshape(1, count * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    planes = F.conv2d(planes, kernels[:, None, :, None], groups=count * channels)  # along H
    planes = F.conv2d(planes, kernels[:, None, None, :], groups=count * channels)  # along W
    return torch.where(apply.view(-1, 1, 1, 1), planes.view_as(images), images)
