"""The regions a context encoder must fill in, for a whole batch at once, on the images' device.

Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting" (CVPR), Sec. 3.3, compare three kinds of
region masks, each removing about a quarter of the image:

- *central region*: one square in the centre (half the side, a quarter of the area); the paper's inpainting
  results use it, but the features it gives latch onto the fixed boundary of the square.
- *random block*: several smaller, possibly overlapping squares at random places, together covering up to a
  quarter of the image.
- *random region*: arbitrary shapes (the paper takes them from PASCAL VOC segmentation masks), covering a
  quarter of the image; the paper's feature-learning experiments use these.

Here the arbitrary shapes are the top ``hole_fraction`` of a smooth random field (uniform noise on a coarse
grid, upsampled bicubically): one to a few irregular blobs per image, no data set of masks needed.

Every function returns ``(B, 1, S, S)`` bool masks, True on the hole (the pixels removed).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Cells of the noise grid behind the random regions: 4 gives blobs about a quarter of the image wide, so a hole
# is a few irregular pieces, neither one blob (like the central square) nor speckle (which is easy to fill in).
REGION_GRID = 4


def hole_side(image_size: int, area_fraction: float) -> int:
    """Side of a square covering ``area_fraction`` of an ``S x S`` image, at least 1 px."""
    return max(1, min(image_size, round(image_size * math.sqrt(area_fraction))))


def center_masks(batch: int, image_size: int, hole_fraction: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The central square covering ``hole_fraction`` of the image (0.25: half the side), the same for every image.

    Args:
        batch: ``B``.
        image_size: ``S``.
        hole_fraction: share of the image's area removed.
        device: where the masks live.

    Returns:
        ``(B, 1, S, S)`` bool; rows and columns ``[start, start + side)`` are True with
        ``side = round(S * sqrt(hole_fraction))`` and ``start = (S - side) // 2``.
    """
    side = hole_side(image_size, hole_fraction)
    start = (image_size - side) // 2
    span = torch.arange(image_size, device=device)
    inside = (span >= start) & (span < start + side)  # (S,)
    square = inside[:, None] & inside[None, :]  # (S, S)
    return square.expand(batch, 1, image_size, image_size)


def block_masks(image_size: int, corners: torch.Tensor, side: int) -> torch.Tensor:
    """The union of ``K`` squares of side ``side`` per image, placed at ``corners``.

    Args:
        image_size: ``S``.
        corners: ``(B, K, 2)`` int64, (row, column) of each square's top-left pixel, in ``[0, S - side]``.
        side: side of every square.

    Returns:
        ``(B, 1, S, S)`` bool: pixel ``(y, x)`` of image ``b`` is True if some ``k`` has
        ``corners[b, k] <= (y, x) < corners[b, k] + side``.
    """
    span = torch.arange(image_size, device=corners.device)
    offsets = span - corners[..., None]  # (B, K, 2, S): each pixel row/column relative to each corner
    inside = (offsets >= 0) & (offsets < side)  # (B, K, 2, S)
    squares = inside[:, :, 0, :, None] & inside[:, :, 1, None, :]  # (B, K, S, S)
    return squares.any(dim=1, keepdim=True)  # (B, 1, S, S)


def region_masks(noise: torch.Tensor, image_size: int, hole_fraction: float) -> torch.Tensor:
    """Irregular regions: the ``round(hole_fraction * S**2)`` highest pixels of the upsampled noise field.

    Args:
        noise: ``(B, g, g)`` float, e.g. uniform on a :data:`REGION_GRID` grid.
        image_size: ``S``.
        hole_fraction: share of each image's pixels removed (exactly, to the pixel).

    Returns:
        ``(B, 1, S, S)`` bool with exactly ``max(1, round(hole_fraction * S * S))`` True pixels per image.
    """
    batch = noise.shape[0]
    field = F.interpolate(noise[:, None], size=(image_size, image_size), mode="bicubic", align_corners=False)
    holes = max(1, round(hole_fraction * image_size * image_size))
    # The indices of the top values rather than a threshold, so the area is exact even where values tie.
    chosen = field.flatten(1).topk(holes, dim=1).indices  # (B, holes)
    masks = torch.zeros(batch, image_size * image_size, dtype=torch.bool, device=noise.device)
    masks.scatter_(1, chosen, True)
    return masks.view(batch, 1, image_size, image_size)
