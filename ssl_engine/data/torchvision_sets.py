"""torchvision's data sets (CIFAR-10/100, STL-10, SVHN, MNIST, Fashion-MNIST) as engine data sets.

The data dir (``--data-dir``, else ``$SSLX_DATA_DIR``, else ``~/.cache/sslx/data``) may hold each set in a folder
of the set's name (``DATA_DIR/cifar10/cifar-10-batches-py``) or in torchvision's own layout, the folder a
torchvision user already has (``DATA_DIR/cifar-10-batches-py``, ``DATA_DIR/FashionMNIST/raw``, ...). Nothing is
downloaded unless ``--download`` is given (into ``DATA_DIR/NAME``); a missing data set is a :class:`DataError`
saying where it was looked for. Sets without a validation split hold out ``val_fraction`` of train,
deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision
from torch.utils.data import Dataset

from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.data.resized import ResizedImages, holdout_split

SPLITS = ("train", "val", "test")

# What torchvision keeps under its root for each set: the sign that a folder is such a root.
TORCHVISION_FOLDERS = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "train_32x32.mat",
    "mnist": "MNIST/raw",
    "fashion-mnist": "FashionMNIST/raw",
    "stl10": "stl10_binary",
}


def torchvision_root(name: str, options: DataOptions) -> Path:
    """The folder to give torchvision: ``DATA_DIR/NAME`` when the set is there (or nowhere yet: downloads go
    there), ``DATA_DIR`` itself when it holds torchvision's layout directly."""
    named = options.root / name
    marker = TORCHVISION_FOLDERS.get(name)
    if marker is not None and not (named / marker).exists() and (options.root / marker).exists():
        return options.root
    return named


def _open(name: str, make: Callable[[], Dataset[Any]], options: DataOptions) -> Dataset[Any]:
    try:
        return make()
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        hint = "" if options.download else "; pass --download to fetch it, or --data-dir to point at a copy"
        marker = TORCHVISION_FOLDERS.get(name, name)
        raise DataError(
            f"data set {name!r} not found: looked for {options.root / name / marker} and {options.root / marker} "
            f"(the data dir is --data-dir, else $SSLX_DATA_DIR, else ~/.cache/sslx/data){hint} ({error})"
        ) from None


def _train_test_set(name: str, builder: Callable[..., Dataset[Any]], by_split_name: bool = False) -> Callable[..., Any]:
    """A factory for a torchvision set with train and test parts (val held out of train)."""

    def factory(split: str, image_size: int, options: DataOptions) -> ResizedImages:
        if split not in SPLITS:
            raise DataError(f"data set {name!r} has splits {', '.join(SPLITS)}; got {split!r}")
        part = "test" if split == "test" else "train"
        root = str(torchvision_root(name, options))
        if by_split_name:
            base = _open(name, lambda: builder(root, split=part, download=options.download), options)
        else:
            base = _open(name, lambda: builder(root, train=part == "train", download=options.download), options)
        indices = None if split == "test" else holdout_split(len(base), options.val_fraction, split)  # type: ignore[arg-type]
        return ResizedImages(base, image_size, indices)

    return factory


cifar10 = _train_test_set("cifar10", torchvision.datasets.CIFAR10)
cifar100 = _train_test_set("cifar100", torchvision.datasets.CIFAR100)
svhn = _train_test_set("svhn", torchvision.datasets.SVHN, by_split_name=True)
mnist = _train_test_set("mnist", torchvision.datasets.MNIST)
fashion_mnist_torchvision = _train_test_set("fashion-mnist", torchvision.datasets.FashionMNIST)


def stl10(split: str, image_size: int, options: DataOptions) -> ResizedImages:
    """STL-10: ``train`` (5k labelled, minus val), ``val``, ``test`` (8k) and ``unlabeled`` (100k, label -1)."""
    valid = (*SPLITS, "unlabeled")
    if split not in valid:
        raise DataError(f"data set 'stl10' has splits {', '.join(valid)}; got {split!r}")
    part = {"val": "train"}.get(split, split)
    root = str(torchvision_root("stl10", options))
    base = _open("stl10", lambda: torchvision.datasets.STL10(root, split=part, download=options.download), options)
    indices = holdout_split(len(base), options.val_fraction, split) if split in ("train", "val") else None  # type: ignore[arg-type]
    return ResizedImages(base, image_size, indices, label_of=lambda label: int(label) if label >= 0 else -1)
