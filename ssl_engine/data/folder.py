"""Any folder of images: class subfolders (labelled) or a flat folder (unlabelled).

Layouts accepted for ``--data PATH``:
    ``PATH/train/<class>/*.png`` (+ ``val/``, ``test/``): the splits as given (val held out of train if absent);
    ``PATH/<class>/*.jpg``: labelled, split 80/10/10 deterministically;
    ``PATH/*.jpg``: unlabelled (label -1), every image in ``train``; it can be pretrained on, not evaluated.

Every file is decoded once when the data set is opened: grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit
images are converted to 8-bit RGB; entries that can't be decoded (zero-byte, truncated, corrupt, not an image, a
decompression bomb over PIL's ``Image.MAX_IMAGE_PIXELS``, a directory or a broken or looping link named like an
image) are skipped and counted, and a warning names how many and the first few. Images of any size are resized
(up or down) to ``--image-size``. A split left with no readable image is an error before training starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ssl_engine.data.options import DataError
from ssl_engine.data.resized import holdout_split, to_rgb_tensor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _images_in(folder: Path) -> list[Path]:
    # Every entry named like an image, files or not: a directory or a looping link called cat.png is then
    # counted as skipped instead of vanishing without a word.
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _images_in(p))


class UnreadableImagesWarning(UserWarning):
    """Some files of a folder data set could not be decoded and were skipped."""


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` refusing decompression bombs: past ``Image.MAX_IMAGE_PIXELS`` raises, not only past twice it.

    Raises:
        Image.DecompressionBombError, Image.DecompressionBombWarning: too many pixels declared.
        UnidentifiedImageError, OSError, SyntaxError, ValueError: PIL's errors for files it cannot decode.
    """
    with warnings.catch_warnings():
        # PIL only warns between the limit and twice it, then allocates it all on load().
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


# What PIL raises on a file it cannot decode or will not decode (too many pixels).
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def readable(path: Path) -> bool:
    """Whether ``path`` is a regular file that decodes completely as an image of a sane size."""
    if not path.is_file():  # a directory, a FIFO (opening it would block), a broken or looping link
        return False
    try:
        with open_image(path) as image:
            image.load()
        return True
    except DECODE_ERRORS:
        return False


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """Image files with labels, checked once on opening; decoded and resized on access (in workers if any).

    Attributes:
        files: the readable ``(path, label)`` pairs.
        skipped: the files that could not be decoded.
    """

    def __init__(self, files: list[tuple[Path, int]], image_size: int, classes: list[str], where: Path) -> None:
        self.files = [(path, label) for path, label in files if readable(path)]
        self.skipped = sorted({path for path, _ in files} - {path for path, _ in self.files})
        self.image_size = image_size
        self.classes = classes
        if self.skipped:
            first = ", ".join(path.name for path in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image(s) of {len(files)} in {where}: {first}{more}",
                UnreadableImagesWarning,
                stacklevel=2,
            )
        if files and not self.files:
            raise DataError(f"data folder {where} has no readable image ({len(files)} file(s) failed to decode)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        try:
            with open_image(path) as image:
                return to_rgb_tensor(image, self.image_size), label
        except DECODE_ERRORS as error:
            raise DataError(f"cannot read image {path}: {error}") from None


def _labelled(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = [p.name for p in _class_dirs(folder)]
    files = [(path, label) for label, name in enumerate(classes) for path in _images_in(folder / name)]
    return files, classes


def describe_folder(path: Path) -> str:
    """``"split"``, ``"labelled"`` or ``"unlabelled"``; :class:`DataError` for a missing or empty folder."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data path {path} is not a folder of images")
    if (path / "train").is_dir() and _class_dirs(path / "train"):
        return "split"
    if _class_dirs(path):
        return "labelled"
    if _images_in(path):
        return "unlabelled"
    raise DataError(
        f"data folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) directly or in class subfolders"
    )


def image_folder(path: Path, split: str, image_size: int, val_fraction: float = 0.1) -> ImageFiles:
    """The ``split`` (train, val or test) of the folder at ``path``, as described in the module docstring."""
    layout = describe_folder(path)
    if layout == "unlabelled":
        if split != "train":
            raise DataError(
                f"data folder {path} is unlabelled (no class subfolders): it can be pretrained on, not used for "
                f"the {split} split of an evaluation"
            )
        return ImageFiles([(p, -1) for p in _images_in(path)], image_size, [], path)
    if layout == "split":
        classes = [p.name for p in _class_dirs(path / "train")]
        holds_val = (path / "val").is_dir()
        if (path / split).is_dir() and (split != "train" or holds_val):
            files, found = _labelled(path / split)
            index = {name: i for i, name in enumerate(classes)}
            unknown = sorted(set(found) - set(index))
            if unknown:
                raise DataError(f"{path / split} has classes not in {path / 'train'}: {', '.join(unknown)}")
            return ImageFiles([(p, index[found[label]]) for p, label in files], image_size, classes, path / split)
        if split == "test":
            raise DataError(f"data folder {path} has train/ but no test/ split")
        files, _ = _labelled(path / "train")
        chosen = holdout_split(len(files), val_fraction, split)
        return ImageFiles([files[i] for i in chosen], image_size, classes, path)
    files, classes = _labelled(path)
    # 80/10/10: test is held out first, then val out of the rest.
    rest = holdout_split(len(files), 0.1, "train", seed=1)
    if split == "test":
        chosen = holdout_split(len(files), 0.1, "val", seed=1)
    else:
        chosen = [rest[i] for i in holdout_split(len(rest), 1 / 9, split)]
    return ImageFiles([files[i] for i in chosen], image_size, classes, path)
