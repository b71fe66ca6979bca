"""Pictures of cross-channel prediction for ``sslx show``: what the network sees, the true and predicted colours.

Colours are drawn as they are (no per-image rescaling, unlike the engine's default drawing), so a prediction that
regresses to the mean looks as gray as it is.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

from ssl_engine.color.lab import lab_to_rgb

CELL = 64
CAPTION = 14


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


def colour_grid(columns: list[tuple[str, torch.Tensor]], title: str) -> Image.Image:
    """One row per image, one captioned column per ``(name, (N, 3, S, S) RGB in [0, 1])``."""
    count = columns[0][1].shape[0]
    canvas = Image.new("RGB", (len(columns) * (CELL + 4) + 4, 2 * CAPTION + count * (CELL + 4) + 4), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((4, 1), title, fill="black", font=font)
    for column, (name, images) in enumerate(columns):
        left = 4 + column * (CELL + 4)
        draw.text((left, CAPTION + 1), name, fill="black", font=font)
        for row in range(count):
            canvas.paste(picture(images[row]), (left, 2 * CAPTION + row * (CELL + 4) + 4))
    return canvas
