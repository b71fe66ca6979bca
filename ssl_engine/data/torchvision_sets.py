"""torchvision's data sets (CIFAR-10/100, STL-10, SVHN, MNIST, Fashion-MNIST) as engine data sets.

Nothing is downloaded unless ``--download`` is given; a missing data set is a :class:`DataError` saying where it
was looked for. Sets without a validation split hold out ``val_fraction`` of train, deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch.utils.data import Dataset

from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.data.resized import ResizedImages, holdout_split

SPLITS = ("train", "val", "test")


def _open(name: str, make: Callable[[], Dataset[Any]], options: DataOptions) -> Dataset[Any]:
    try:
        return make()
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        hint = "" if options.download else "; pass --download to fetch it, or --data-dir to point at a copy"
        raise DataError(f"data set {name!r} not found under {options.root}{hint} ({error})") from None


def _train_test_set(name: str, builder: Callable[..., Dataset[Any]], by_split_name: bool = False) -> Callable[..., Any]:
    """A factory for a torchvision set with train and test parts (val held out of train)."""

    def factory(split: str, image_size: int, options: DataOptions) -> ResizedImages:
        if split not in SPLITS:
            raise DataError(f"data set {name!r} has splits {', '.join(SPLITS)}; got {split!r}")
        part = "test" if split == "test" else "train"
        root = str(options.root / name)
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
    root = str(options.root / "stl10")
    base = _open("stl10", lambda: torchvision.datasets.STL10(root, split=part, download=options.download), options)
    indices = holdout_split(len(base), options.val_fraction, split) if split in ("train", "val") else None  # type: ignore[arg-type]
    return ResizedImages(base, image_size, indices, label_of=lambda label: int(label) if label >= 0 else -1)
