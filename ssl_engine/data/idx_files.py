"""Fashion-MNIST read from IDX files, such as Debian's ``dataset-fashion-mnist`` package installs.

Debian puts ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under ``/usr/share/datasets/fashion-mnist``
(MIT licence); the same layout is accepted from ``--data-dir``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.data.resized import ResizedImages, holdout_split
from ssl_engine.data.torchvision_sets import SPLITS, fashion_mnist_torchvision

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): unsigned-byte arrays of any rank."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


class IdxImages(Dataset[tuple[np.ndarray, int]]):
    """Images ``(N, H, W)`` and labels ``(N,)`` from a pair of IDX files."""

    def __init__(self, images: Path, labels: Path) -> None:
        self.images = read_idx(images)
        self.labels = read_idx(labels)
        if len(self.images) != len(self.labels):
            raise DataError(f"{images} has {len(self.images)} images but {labels} has {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


def _find_idx_folder(options: DataOptions) -> Path | None:
    root = options.root
    # Ours, the folder itself, torchvision's layout (its raw/ files are the same IDX files), Debian's copy.
    torchvision_raw = [root / "FashionMNIST" / "raw", root / "fashion-mnist" / "FashionMNIST" / "raw"]
    candidates = [root / "fashion-mnist", root, *torchvision_raw, DEBIAN_FASHION_MNIST]
    for folder in candidates:
        if (folder / "train-images-idx3-ubyte.gz").exists() or (folder / "train-images-idx3-ubyte").exists():
            return folder
    return None


def _idx_path(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.exists() else folder / stem


def fashion_mnist(split: str, image_size: int, options: DataOptions) -> Dataset[tuple[torch.Tensor, int]]:
    """Fashion-MNIST from IDX files (``--data-dir`` or Debian's copy), else torchvision's layout/download."""
    if split not in SPLITS:
        raise DataError(f"data set 'fashion-mnist' has splits {', '.join(SPLITS)}; got {split!r}")
    folder = _find_idx_folder(options)
    if folder is None:
        return fashion_mnist_torchvision(split, image_size, options)
    prefix = "t10k" if split == "test" else "train"
    base = IdxImages(_idx_path(folder, f"{prefix}-images-idx3-ubyte"), _idx_path(folder, f"{prefix}-labels-idx1-ubyte"))
    indices = None if split == "test" else holdout_split(len(base), options.val_fraction, split)
    return ResizedImages(base, image_size, indices)
