"""The worker path's crop and resize (:func:`~ssl_engine.data.crops.crop_to_tensor`), redone on the device for
JPEGs decoded whole there (``--decode device``).

The worker path asks PIL to decode a JPEG at the smallest DCT scale ``1/s`` (``s`` in 1, 2, 4, 8) that keeps the
crop at least ``S`` px a side, then resizes the crop's box, scaled to the reduced image, with PIL's ``BILINEAR``
filter. Here the full-size image is averaged over ``s x s`` blocks (what the DCT scaling approximates) and the same
box is resized with PIL's own resampling coefficients (``precompute_coeffs`` of ``libImaging/Resample.c``: a
triangle filter widened by the scale factor when shrinking, so antialiased, normalised per output pixel), the
horizontal pass first and rounded to 8 bits as PIL rounds it, then the vertical one: each pass is one matrix
product per image. Where the worker path decodes a JPEG whole this gives its pixels to within a level (rounding);
where it drafts, to within a couple of levels, under half a level on average (``tests/test_device_decode.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ssl_engine.data.crops import Box


@dataclass(frozen=True)
class Crop:
    """One JPEG's crop as the worker path would take it.

    Attributes:
        box: the crop, in full-size pixels (whole pixels: a random-resized crop), and whether it is mirrored.
        width, height: the image's full size.
        scale: the DCT scale ``s`` the worker path decodes it at (``1/s`` of the full size; 1: whole).
    """

    box: Box
    width: int
    height: int
    scale: int = 1


def draft_scale(image: Image.Image, box: Box, size: int) -> int:
    """The ``s`` of the ``1/s`` DCT scale at which :func:`~ssl_engine.data.crops.crop_to_tensor` decodes ``image``
    (not decoded yet) for ``box`` at ``size``: PIL's ``draft`` asked with the same request, which decodes nothing."""
    if image.format != "JPEG" or box.width < 2 * size or box.height < 2 * size:  # crop_to_tensor's condition
        return 1
    width, height = image.size
    wanted = (math.ceil(width * size / box.width), math.ceil(height * size / box.height))
    drafted = image.draft("RGB", wanted)
    return 1 if drafted is None else round(width / drafted[1][2])


@dataclass(frozen=True)
class _Axis:
    """One axis of a crop in the image the worker path resizes (reduced by the draft): the box's ends there
    (scaled as ``crop_to_tensor`` scales them), the first and one-past-last pixels the filter reads, the length."""

    begin: float
    end: float
    first: int
    last: int
    length: int

    @classmethod
    def of(cls, full: int, scale: int, start: float, extent: float, size: int) -> _Axis:
        length = -(-full // scale)
        factor = length / full
        begin, end = start * factor, (start + extent) * factor
        step = (end - begin) / size
        support = max(step, 1.0)
        first = max(int(begin + 0.5 * step - support + 0.5), 0)
        last = min(int(begin + (size - 0.5) * step + support + 0.5), length)
        return cls(begin, end, first, last, length)


def bilinear_weights(axes: list[_Axis], size: int, device: torch.device) -> torch.Tensor:
    """PIL's ``BILINEAR`` resampling coefficients of one axis of ``G`` crops, as dense matrices on ``device``.

    Returns:
        float32 ``(G, S, L)``: row ``i`` of crop ``g`` weights input pixel ``first + k`` (``first`` the crop's
        :attr:`_Axis.first`) into output pixel ``i``; ``L`` the longest read range. A triangle filter of half-width
        1 input pixel, widened by the shrink factor, cut at the input's ends and normalised, as PIL's.
    """
    params = [[axis.begin, axis.end, axis.first, axis.length] for axis in axes]
    begin, end, first, length = torch.tensor(params, dtype=torch.float32).to(device).unbind(1)  # (G,) each
    step = (end - begin) / size
    support = step.clamp(min=1.0)[:, None]  # (G, 1)
    centres = begin[:, None] + (torch.arange(size, device=device) + 0.5) * step[:, None]  # (G, S)
    low = (centres - support + 0.5).floor().clamp(min=0)  # PIL: int() of the value, then clamped to 0
    high = torch.minimum((centres + support + 0.5).floor(), length[:, None])
    longest = max(axis.last - axis.first for axis in axes)
    pixels = first[:, None, None] + torch.arange(longest, device=device)  # (G, 1, L)
    weights = (1 - ((pixels - centres[..., None] + 0.5) / support[..., None]).abs()).clamp(min=0)
    weights = weights * ((pixels >= low[..., None]) & (pixels < high[..., None]))  # (G, S, L)
    return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)


def resize_crops(images: list[torch.Tensor], crops: list[Crop], size: int) -> torch.Tensor:
    """The crops of full-size images, drafted and resized as the worker path does, mirrored where asked.

    Each pass is a matrix product with dense coefficients (most of them 0): wasteful on a CPU, where the device path
    is for tests, a few kernel launches per image on a GPU.

    Args:
        images: ``G`` decoded images, uint8 ``(3, H, W)`` each, on one device.
        crops: their :class:`Crop`.
        size: ``S``.

    Returns:
        uint8 ``(G, 3, S, S)`` on the images' device.
    """
    device = images[0].device
    across = [_Axis.of(crop.width, crop.scale, crop.box.left, crop.box.width, size) for crop in crops]
    down = [_Axis.of(crop.height, crop.scale, crop.box.top, crop.box.height, size) for crop in crops]
    across_weights, down_weights = bilinear_weights(across, size, device), bilinear_weights(down, size, device)
    out = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device)
    for g, (image, crop, x, y) in enumerate(zip(images, crops, across, down, strict=True)):
        s, columns, rows = crop.scale, x.last - x.first, y.last - y.first
        region = image[:, y.first * s : y.last * s, x.first * s : x.last * s].float()  # the full-size read range
        if s > 1:
            region = F.avg_pool2d(region[None], s, ceil_mode=True)[0]  # (3, rows, columns): the 1/s draft
        resized_rows = (region @ across_weights[g, :, :columns].T).round_()  # (3, rows, S), 8-bit as PIL's
        torch.matmul(down_weights[g, :, :rows], resized_rows, out=out[g])  # (3, S, S)
    flip = torch.tensor([crop.box.flip for crop in crops], device=device)
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)
