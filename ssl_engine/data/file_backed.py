"""File-backed data sets (folders, tar shards): opened by listing, each image decoded when it is loaded.

This is the second of the two data regimes (``docs``: the README's "Data" paragraph)::

    small sets (registered: shapes, CIFAR, MNIST, SVHN, STL-10)   file-backed sets (folders, WebDataset shards)
      decoded once, squashed to S x S, held in memory            listed on opening; decoded in DataLoader workers
      base augmentation on the device: pad-crop-flip             base augmentation in the workers: random-resized
                                                                   crop + flip, aspect ratio kept
      evaluation: the S x S image                                evaluation: short side resized, centre crop

Either way every task receives uint8 ``(B, 3, S, S)`` batches.

A file that fails to decode when it is loaded (zero bytes, truncated, not an image, a decompression bomb, gone) is
skipped: another sample, chosen deterministically from the index alone, takes its place, so the batch keeps its
size and a run stays a function of (seed, step). The training stream counts these and names the first ones
(:class:`~ssl_engine.data.batches.BatchStream`); the evaluation view warns for each of the first few.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from itertools import islice
from typing import IO

import torch
from torch.utils.data import Dataset

from ssl_engine.data.crops import Box, center_box, crop_random, crop_to_tensor, random_resized_box
from ssl_engine.data.decode import DECODE_ERRORS, open_image
from ssl_engine.data.options import DataError
from ssl_engine.data.order import epoch_order
from ssl_engine.randomness import mix_seed

# Replacements tried at random before walking the index in order to the next readable image.
RANDOM_REPLACEMENTS = 8
# The evaluation view names this many unreadable files (per data set and process), then only counts.
NAMED_WARNINGS = 5


class UnreadableImagesWarning(UserWarning):
    """Some images of a data set could not be decoded and were skipped."""


class FileBackedImages(Dataset[tuple[torch.Tensor, int]]):
    """Images decoded on access; ``dataset[i]`` is the evaluation view: uint8 ``(3, S, S)`` and the label.

    Subclasses provide :meth:`__len__`, :meth:`source_of` (a path or a binary file object), :meth:`label_of` and
    :meth:`name_of`.

    Args:
        image_size: ``S``.
        classes: class names (empty when unlabelled).
        where: the folder or shard pattern, for messages.
    """

    def __init__(self, image_size: int, classes: list[str], where: str) -> None:
        self.image_size = image_size
        self.classes = classes
        self.where = where
        self._warned = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def source_of(self, index: int) -> str | IO[bytes]:
        """What :func:`open_image` reads for sample ``index``."""
        raise NotImplementedError

    def label_of(self, index: int) -> int:
        raise NotImplementedError

    def name_of(self, index: int) -> str:
        """How messages name sample ``index`` (a path relative to the folder, ``shard:key``)."""
        raise NotImplementedError

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """The order of ``epoch`` (a permutation of the indices), the same on every process and resume."""
        return epoch_order(len(self), seed, epoch)

    def try_load(self, index: int, box_of: Callable[[int, int], Box]) -> tuple[torch.Tensor, int] | str:
        """Sample ``index`` cropped by ``box_of(width, height)``, or why it can't be decoded."""
        try:
            with open_image(self.source_of(index)) as image:
                return crop_to_tensor(image, box_of(*image.size), self.image_size), self.label_of(index)
        except DECODE_ERRORS as error:
            return f"{type(error).__name__}: {error}".strip()

    def load(
        self, index: int, box_of: Callable[[int, int], Box], start: int = 0
    ) -> tuple[torch.Tensor, int, list[tuple[int, str]]]:
        """Sample ``index``, or when it can't be decoded the replacement that :func:`replacements` picks; also
        returns each ``(index, reason)`` that failed on the way. ``start`` skips that many candidates of the chain
        (tried elsewhere already: the device-decode path continues a chain its worker began)."""
        failed: list[tuple[int, str]] = []
        for candidate in islice(replacements(index, len(self)), start, None):
            loaded = self.try_load(candidate, box_of)
            if not isinstance(loaded, str):
                return loaded[0], loaded[1], failed
            failed.append((candidate, loaded))
        raise DataError(f"no image of {self.where} can be decoded ({len(self)} tried)")

    def training_sample(
        self, index: int, seed: int, step: int, slot: int, start: int = 0
    ) -> tuple[torch.Tensor, int, list[int]]:
        """Sample ``index`` as place ``slot`` of the global batch of ``step``: random-resized crop and flip (from
        candidate ``start`` of its replacement chain, as :meth:`load`); the indices that failed on the way."""
        rng_seed = (seed, step, slot)

        def box_of(width: int, height: int) -> Box:
            return random_resized_box(width, height, crop_random(*rng_seed))

        image, label, failed = self.load(index, box_of, start)
        return image, label, [where for where, _ in failed]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label, failed = self.load(index, center_box)
        for where, reason in failed:
            self._warn(where, reason)
        return image, label

    def _warn(self, index: int, reason: str) -> None:
        self._warned += 1
        if self._warned <= NAMED_WARNINGS:
            more = "; further ones are not named" if self._warned == NAMED_WARNINGS else ""
            warnings.warn(
                f"skipped unreadable image {self.name_of(index)} of {self.where} ({reason}); another image of the "
                f"split is used in its place{more}",
                UnreadableImagesWarning,
                stacklevel=3,
            )

    def first_readable(self, limit: int | None = None) -> int | None:
        """The first index (in index order) that decodes, or ``None``: a check on opening that the data set
        has any readable image at all, which costs one decode unless the first files are broken."""
        for index in range(len(self) if limit is None else min(limit, len(self))):
            if not isinstance(self.try_load(index, center_box), str):
                return index
        return None


def replacements(index: int, count: int) -> Iterator[int]:
    """``index``, then :data:`RANDOM_REPLACEMENTS` others drawn from a generator seeded by ``index`` alone, then
    every index in order from ``index + 1`` (wrapping): the same on every process, epoch and resume."""
    yield index
    if count <= 1:
        return
    for attempt in range(RANDOM_REPLACEMENTS):
        yield (index + 1 + mix_seed("replacement", index, attempt) % (count - 1)) % count
    for offset in range(1, count):
        yield (index + offset) % count


class TrainingCrops(Dataset[tuple[torch.Tensor, int, list[int]]]):
    """The training view the batch stream reads: key ``(index, step, slot)`` -> crop, label, failed indices."""

    def __init__(self, images: FileBackedImages, seed: int) -> None:
        self.images, self.seed = images, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, list[int]]:
        index, step, slot = key
        return self.images.training_sample(index, self.seed, step, slot)


def collate_crops(
    samples: list[tuple[torch.Tensor, int, list[int]]],
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images ``(B, 3, S, S)``, labels ``(B,)`` and every index that failed to decode on the way."""
    images = torch.stack([image for image, _, _ in samples])
    labels = torch.tensor([label for _, label, _ in samples], dtype=torch.long)
    return images, labels, [index for _, _, failed in samples for index in failed]
