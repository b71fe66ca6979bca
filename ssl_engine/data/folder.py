"""Any folder of images: class subfolders (labelled) or a flat folder (unlabelled), opened by listing only.

Layouts accepted for ``--data PATH``:
    ``PATH/train/<class>/*.png`` (+ ``val/``, ``test/``): the splits as given (val held out of train if absent);
    ``PATH/<class>/*.jpg``: labelled, split 80/10/10 deterministically;
    ``PATH/*.jpg``: unlabelled (label -1), every image in ``train``; it can be pretrained on, not evaluated.

Opening a folder lists it, as torchvision's ``ImageFolder`` does, and decodes one image (a folder with no readable
image is refused before training starts). Entries named like images that are not regular files (a directory, a
FIFO, a broken or looping link) are left out and counted at once. Every image is decoded when it is loaded, in
DataLoader workers: a file that fails then is skipped and replaced by another sample
(:mod:`ssl_engine.data.file_backed`), counted and named at the end of the run and in ``metrics.jsonl``.

``verify=True`` (``--verify-images``) decodes every file on opening instead, and leaves out the unreadable ones
with one warning: slow on a large folder (about 5 ms per photograph, on one core), exact on a small one.

Images keep their aspect ratio: training crops are random-resized crops, evaluation resizes the short side and
crops the centre (:mod:`ssl_engine.data.crops`). Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images
are converted to 8-bit RGB.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ssl_engine.data.crops import center_box
from ssl_engine.data.decode import DECODE_ERRORS, open_image
from ssl_engine.data.file_backed import FileBackedImages, UnreadableImagesWarning
from ssl_engine.data.options import DataError
from ssl_engine.data.resized import holdout_split

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "UnreadableImagesWarning", "describe_folder", "image_folder", "readable"]


def _named_like_image(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES  # os.path.splitext's rule, 3x faster


def _listing(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted names of the regular files named like images in ``folder``, and of the other entries named so."""
    files: list[str] = []
    others: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not _named_like_image(entry.name):
                continue
            try:
                regular = entry.is_file()  # follows links; a FIFO, a directory or a looping link is not
            except OSError:
                regular = False
            (files if regular else others).append(entry.name)
    return sorted(files), sorted(others)


def _has_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(_named_like_image(entry.name) for entry in entries)


def _class_dirs(folder: Path) -> list[Path]:
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.name.startswith(".") or not entry.is_dir() or not _has_image(Path(entry.path)):
                    continue
            except OSError:  # a looping link, a folder we may not read
                continue
            found.append(Path(entry.path))
    return sorted(found)


def readable(path: Path) -> bool:
    """Whether ``path`` is a regular file that decodes completely as an image of a sane size."""
    if not path.is_file():  # a directory, a FIFO (opening it would block), a broken or looping link
        return False
    try:
        with open_image(str(path)) as image:
            image.load()
        return True
    except DECODE_ERRORS:
        return False


class ImageFiles(FileBackedImages):
    """The images of one split of a folder, listed (not decoded) on opening.

    Paths are held as one numpy array of bytes relative to ``root`` (not a Python list of strings: DataLoader
    workers would copy the list's pages by touching reference counts), labels as one int64 array.

    Args:
        root: the folder the names are relative to.
        files: ``(path relative to root, label)`` pairs, in a fixed order.
        image_size: ``S``.
        classes: class names (empty when unlabelled).
        where: the folder, for messages.
        not_files: entries named like images that are not regular files (reported, never loaded).
        verify: decode every file now and leave out the unreadable ones.
    """

    def __init__(
        self,
        root: Path,
        files: list[tuple[str, int]],
        image_size: int,
        classes: list[str],
        where: Path,
        *,
        not_files: list[str] | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__(image_size, classes, str(where))
        self.root = root
        skipped = list(not_files or [])
        listed = len(files) + len(skipped)
        if verify:
            kept = [(name, label) for name, label in files if readable(root / name)]
            skipped += sorted({name for name, _ in files} - {name for name, _ in kept})
            files = kept
        self.skipped = sorted(root / name for name in skipped)
        self._names = np.array([os.fsencode(name) for name, _ in files], dtype=bytes)
        self._labels = np.array([label for _, label in files], dtype=np.int64)
        if self.skipped:
            first = ", ".join(path.name for path in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image(s) of {listed} in {where}: {first}{more}",
                UnreadableImagesWarning,
                stacklevel=2,
            )
        if listed and not files:
            raise DataError(f"data folder {where} has no readable image ({listed} file(s) failed to decode)")
        if not verify and files and self.first_readable() is None:
            first = ", ".join(name for name, _ in files[:5]) + (" ..." if len(files) > 5 else "")
            reason = self.try_load(0, center_box)
            raise DataError(
                f"data folder {where} has no readable image ({len(files)} file(s) failed to decode: {first}; the "
                f"first: {reason})"
            )

    def __len__(self) -> int:
        return len(self._names)

    def path_of(self, index: int) -> Path:
        return self.root / os.fsdecode(self._names[index])

    def source_of(self, index: int) -> str:
        return str(self.path_of(index))

    def label_of(self, index: int) -> int:
        return int(self._labels[index])

    def name_of(self, index: int) -> str:
        return os.fsdecode(self._names[index])

    @property
    def files(self) -> list[tuple[Path, int]]:
        """Every ``(path, label)``, in index order (built on demand: the data set holds arrays)."""
        return [(self.path_of(i), self.label_of(i)) for i in range(len(self))]


def _labelled(folder: Path, prefix: str = "") -> tuple[list[tuple[str, int]], list[str], list[str]]:
    classes = [p.name for p in _class_dirs(folder)]
    files: list[tuple[str, int]] = []
    others: list[str] = []
    for label, name in enumerate(classes):
        found, odd = _listing(folder / name)
        files += [(f"{prefix}{name}/{file}", label) for file in found]
        others += [f"{prefix}{name}/{file}" for file in odd]
    return files, classes, others


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
    if _has_image(path):
        return "unlabelled"
    raise DataError(
        f"data folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) directly or in class subfolders"
    )


def image_folder(
    path: Path, split: str, image_size: int, val_fraction: float = 0.1, *, verify: bool = False
) -> ImageFiles:
    """The ``split`` (train, val or test) of the folder at ``path``, as described in the module docstring."""
    if split not in ("train", "val", "test"):
        raise DataError(f"data folder {path} has the splits train, val and test; got {split!r}")
    layout = describe_folder(path)

    def files_of(files: list[tuple[str, int]], classes: list[str], where: Path, others: list[str]) -> ImageFiles:
        return ImageFiles(path, files, image_size, classes, where, not_files=others, verify=verify)

    if layout == "unlabelled":
        if split != "train":
            raise DataError(
                f"data folder {path} is unlabelled (no class subfolders): it can be pretrained on, not used for "
                f"the {split} split of an evaluation"
            )
        found, odd = _listing(path)
        return files_of([(name, -1) for name in found], [], path, odd)
    if layout == "split":
        classes = [p.name for p in _class_dirs(path / "train")]
        holds_val = (path / "val").is_dir()
        if (path / split).is_dir() and (split != "train" or holds_val):
            files, found, others = _labelled(path / split, f"{split}/")
            index = {name: i for i, name in enumerate(classes)}
            unknown = sorted(set(found) - set(index))
            if unknown:
                raise DataError(
                    f"{path / split} has classes not in {path / 'train'}: {', '.join(unknown)} (the splits of a "
                    f"folder must share their class subfolders)"
                )
            return files_of([(p, index[found[label]]) for p, label in files], classes, path / split, others)
        if split == "test":
            raise DataError(f"data folder {path} has train/ but no test/ split")
        files, _, others = _labelled(path / "train", "train/")
        chosen = holdout_split(len(files), val_fraction, split)
        return files_of([files[i] for i in chosen], classes, path, others if split == "train" else [])
    files, classes, others = _labelled(path)
    # 80/10/10: test is held out first, then val out of the rest.
    rest = holdout_split(len(files), 0.1, "train", seed=1)
    if split == "test":
        chosen = holdout_split(len(files), 0.1, "val", seed=1)
    else:
        chosen = [rest[i] for i in holdout_split(len(rest), 1 / 9, split)]
    return files_of([files[i] for i in chosen], classes, path, others if split == "train" else [])
