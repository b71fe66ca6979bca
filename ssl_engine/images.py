"""Image tensors as the engine passes them around.

Batches travel as uint8 ``(B, 3, H, W)`` to the device, become float in ``[0, 1]`` there, and are standardised
with :func:`normalize` just before a network sees them.
"""

from __future__ import annotations

import torch

# Per-channel statistics of natural images (ImageNet); close enough for any RGB data, and fixed so a trained
# backbone never depends on the data set it is later evaluated on.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` in [0, 255] -> float32 in [0, 1] (floats pass through)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Standardise float images ``(B, 3, H, W)`` in [0, 1] with :data:`MEAN` and :data:`STD`."""
    mean = torch.tensor(MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``(B, 3, H, W)`` standardised -> the [0, 1] scale (not clamped)."""
    mean = torch.tensor(MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return images * std + mean


def standardize_each(images: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per image and channel, ``(N, C, H, W)`` -> same shape.

    Used on jigsaw tiles and patches so a network cannot match pieces by their low-level statistics
    (Noroozi & Favaro 2016, Sec. 3.2).
    """
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True)
    return (images - mean) / (std + eps)
