"""Pictures of cross-channel prediction for ``sslx show``: what the network sees, the true and predicted colours.

Colours are drawn as they are (no per-image rescaling, unlike the engine's default drawing), so a prediction that
regresses to the mean looks as gray as it is.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.nn import functional as F

from ssl_engine.color.lab import lab_to_rgb
from ssl_engine.drawing import CELL, PictureCell, picture_sheet


def with_colour(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The RGB image of a lightness and a (possibly coarser) colour map, clipped to the gamut.

    Args:
        lightness: ``(N, 1, S, S)`` L in [0, 100].
        ab: ``(N, 2, h, w)`` in Lab units; enlarged to ``S`` (nearest), as each value covers its block.

    Returns:
        ``(N, 3, S, S)`` sRGB in [0, 1].
    """
    size = lightness.shape[-2:]
    if ab.shape[-2:] != size:
        ab = F.interpolate(ab.float(), size=size, mode="nearest")
    return lab_to_rgb(torch.cat([lightness.float(), ab.float()], dim=1))


def picture(image: torch.Tensor, size: int = CELL) -> Image.Image:
    """An RGB image ``(3, H, W)`` in [0, 1] as a ``size`` px picture, colours as they are."""
    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array).resize((size, size), Image.Resampling.NEAREST)


def colour_grid(columns: list[tuple[str, torch.Tensor]], title: str, *, caption: str = "") -> Image.Image:
    """One row per image, one column per ``(heading, (N, 3, S, S) RGB in [0, 1])``, laid out by
    :func:`ssl_engine.drawing.picture_sheet` (the title wrapped, ``caption`` under the rows)."""
    count = columns[0][1].shape[0]
    rows = [[PictureCell(picture(images[row])) for _, images in columns] for row in range(count)]
    return picture_sheet(rows, title, header=[name for name, _ in columns], caption=caption)
