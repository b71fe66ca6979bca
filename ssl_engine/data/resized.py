"""Adapting any image data set to the engine's uint8 ``(3, S, S)`` images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_engine.data.decode import to_rgb


def to_rgb_tensor(image: Any, image_size: int) -> torch.Tensor:
    """PIL image, ``(H, W)``/``(H, W, C)`` array or ``(C, H, W)`` tensor -> uint8 ``(3, S, S)``.

    Grayscale is promoted to RGB (channel repeated); the image is resized to ``S x S`` with antialiasing.
    """
    if isinstance(image, torch.Tensor):
        array = image.numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        image = array
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        image = Image.fromarray(image)
    image = to_rgb(image)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ResizedImages(Dataset[tuple[torch.Tensor, int]]):
    """A view of ``base`` (optionally a subset of its indices) with images made uint8 ``(3, S, S)``.

    Args:
        base: any data set yielding ``(image, label)``.
        image_size: ``S``.
        indices: the subset to expose, in order (all when ``None``).
        label_of: maps the base's label to an int (``-1`` when unlabelled).
    """

    def __init__(
        self,
        base: Dataset[Any],
        image_size: int,
        indices: Sequence[int] | None = None,
        label_of: Callable[[Any], int] = int,
    ) -> None:
        self.base = base
        self.image_size = image_size
        self.indices = list(range(len(base))) if indices is None else list(indices)  # type: ignore[arg-type]
        self.label_of = label_of

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def classes(self) -> list[str]:
        """The base data set's class names, when it has them."""
        return list(getattr(self.base, "classes", []) or [])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[self.indices[index]]
        return to_rgb_tensor(image, self.image_size), self.label_of(label)


def holdout_split(count: int, fraction: float, split: str, seed: int = 0) -> list[int]:
    """Deterministically split ``range(count)`` into train and val; return the indices of ``split``."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(count * fraction))
    return sorted(order[cut:] if split == "train" else order[:cut])
