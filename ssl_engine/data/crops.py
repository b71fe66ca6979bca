"""The crops of file-backed data: aspect ratio kept, one resample from the file's pixels to ``S x S``.

Training takes the field's random-resized crop and horizontal flip (Szegedy et al. 2015; torchvision's
``RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3))`` + ``RandomHorizontalFlip``, same sampling rule);
evaluation resizes the short side to ``S / 0.875`` and takes the central ``S x S`` (torchvision's
``Resize(256)`` + ``CenterCrop(224)`` at 224 px).

Both are computed on the image's full size from its header, *before* decoding, so a JPEG is decoded at the
smallest DCT scale (1/2, 1/4, 1/8) that still gives the crop at least ``S`` pixels a side (PIL's ``draft``): the
"load size" of each image follows its crop. The crop and resize are then one PIL ``resize(box=...)``.

The randomness of each crop depends only on (seed, step, place in the global batch), like every other random
draw of a run, so 1 process and N processes, and a resumed run, crop identically.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ssl_engine.data.decode import to_rgb
from ssl_engine.randomness import mix_seed

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # 224 / 256


@dataclass(frozen=True)
class Box:
    """A crop of the full-size image: ``left, top, width, height`` in pixels, and whether it is mirrored."""

    left: float
    top: float
    width: float
    height: float
    flip: bool = False


def crop_random(seed: int, step: int, slot: int) -> random.Random:
    """The generator of the crop of sample ``slot`` of the global batch of ``step``."""
    return random.Random(mix_seed(seed, "base-augment", step, slot))


def random_resized_box(width: int, height: int, rng: random.Random) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the central crop of the nearest allowed
    ratio) and a fair coin for the flip, drawn from ``rng``."""
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return Box(left, top, w, h, rng.random() < 0.5)
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return Box((width - w) // 2, (height - h) // 2, w, h, rng.random() < 0.5)


def center_box(width: int, height: int) -> Box:
    """The central square of side ``short side * 0.875``: resize-short-side then centre-crop, as one box."""
    side = min(width, height) * EVAL_CROP_FRACTION
    return Box((width - side) / 2, (height - side) / 2, side, side)


def crop_to_tensor(image: Image.Image, box: Box, size: int) -> torch.Tensor:
    """The ``box`` of ``image`` (given in its full-size pixels) resized to uint8 ``(3, size, size)``.

    A JPEG not decoded yet is decoded at the smallest scale that keeps the box at least ``size`` px a side.
    """
    full_width, full_height = image.size
    if image.format == "JPEG" and box.width >= 2 * size and box.height >= 2 * size:
        wanted = (math.ceil(full_width * size / box.width), math.ceil(full_height * size / box.height))
        image.draft("RGB", wanted)
    image = to_rgb(image)
    scale_x, scale_y = image.size[0] / full_width, image.size[1] / full_height
    region = (
        box.left * scale_x,
        box.top * scale_y,
        (box.left + box.width) * scale_x,
        (box.top + box.height) * scale_y,
    )
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=region, reducing_gap=None)
    if box.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
