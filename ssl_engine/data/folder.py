"""Any folder of images: class subfolders (labelled) or a flat folder (unlabelled).

Layouts accepted for ``--data PATH``:
    ``PATH/train/<class>/*.png`` (+ ``val/``, ``test/``): the splits as given (val held out of train if absent);
    ``PATH/<class>/*.jpg``: labelled, split 80/10/10 deterministically;
    ``PATH/*.jpg``: unlabelled (label -1), every image in ``train``; it can be pretrained on, not evaluated.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ssl_engine.data.options import DataError
from ssl_engine.data.resized import holdout_split, to_rgb_tensor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _images_in(p))


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """Image files with labels; decoded and resized on access (in worker processes when there are any)."""

    def __init__(self, files: list[tuple[Path, int]], image_size: int, classes: list[str]) -> None:
        self.files = files
        self.image_size = image_size
        self.classes = classes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        try:
            with Image.open(path) as image:
                return to_rgb_tensor(image, self.image_size), label
        except (UnidentifiedImageError, OSError) as error:
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
        return ImageFiles([(p, -1) for p in _images_in(path)], image_size, [])
    if layout == "split":
        classes = [p.name for p in _class_dirs(path / "train")]
        holds_val = (path / "val").is_dir()
        if (path / split).is_dir() and (split != "train" or holds_val):
            files, found = _labelled(path / split)
            index = {name: i for i, name in enumerate(classes)}
            unknown = sorted(set(found) - set(index))
            if unknown:
                raise DataError(f"{path / split} has classes not in {path / 'train'}: {', '.join(unknown)}")
            return ImageFiles([(p, index[found[label]]) for p, label in files], image_size, classes)
        if split == "test":
            raise DataError(f"data folder {path} has train/ but no test/ split")
        files, _ = _labelled(path / "train")
        chosen = holdout_split(len(files), val_fraction, split)
        return ImageFiles([files[i] for i in chosen], image_size, classes)
    files, classes = _labelled(path)
    # 80/10/10: test is held out first, then val out of the rest.
    rest = holdout_split(len(files), 0.1, "train", seed=1)
    if split == "test":
        chosen = holdout_split(len(files), 0.1, "val", seed=1)
    else:
        chosen = [rest[i] for i in holdout_split(len(rest), 1 / 9, split)]
    return ImageFiles([files[i] for i in chosen], image_size, classes)
