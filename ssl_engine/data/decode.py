"""Decoding one image file safely: PIL refusing decompression bombs, every mode made 8-bit RGB.

Used by the file-backed data sets (folders and shards) in DataLoader workers, where a file that can't be decoded
must never take the run down: :data:`DECODE_ERRORS` lists what "can't be decoded" means.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

# What PIL raises on a file it cannot decode or will not decode (too many pixels).
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


@contextmanager
def open_image(source: str | IO[bytes]) -> Iterator[Image.Image]:
    """``Image.open`` refusing decompression bombs: past ``Image.MAX_IMAGE_PIXELS`` raises, not only past twice it.

    Args:
        source: a path, or a binary file object (a member of a tar shard).

    Raises:
        Image.DecompressionBombError, Image.DecompressionBombWarning: too many pixels declared.
        UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError: PIL's errors for files it cannot decode.
    """
    with warnings.catch_warnings():
        # PIL only warns between the limit and twice it, then allocates it all on load(). Its other warnings
        # (odd EXIF, palette transparency) would be printed by every worker for every such file: silenced.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            yield image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: grayscale repeated, alpha dropped, palette and CMYK converted, 16- and 32-bit
    images scaled from their full range (not clipped at 255)."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image
