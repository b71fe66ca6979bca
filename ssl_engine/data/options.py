"""Options every data-set factory receives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR_VARIABLE = "SSLX_DATA_DIR"


class DataError(ValueError):
    """The data can't be used (missing path, empty folder, not downloaded, no labels); the message says why."""


@dataclass(frozen=True)
class DataOptions:
    """Where data lives and whether it may be downloaded.

    Attributes:
        data_dir: root folder for downloadable data sets (``--data-dir``); ``None`` means ``$SSLX_DATA_DIR``, else
            ``~/.cache/sslx/data``. It may hold each set in a folder of the set's name (``DATA_DIR/cifar10/...``)
            or in torchvision's own layout (``DATA_DIR/cifar-10-batches-py``, ``DATA_DIR/FashionMNIST/raw``, ...).
        download: allow torchvision to download (``--download``).
        val_fraction: share of a train split held out as validation when the data set has no val split.
        verify_images: decode every image of a folder when it is opened (``--verify-images``) rather than when
            it is loaded.
    """

    data_dir: Path | None = None
    download: bool = False
    val_fraction: float = 0.1
    verify_images: bool = False

    @property
    def root(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        from_environment = os.environ.get(DATA_DIR_VARIABLE, "").strip()
        if from_environment:
            return Path(from_environment).expanduser()
        return Path.home() / ".cache" / "sslx" / "data"

    @classmethod
    def of_config(cls, config: Any) -> DataOptions:
        """The options a run's config (``data_dir``, ``download``, ``verify_images``) gives."""
        data_dir = getattr(config, "data_dir", None)
        return cls(
            Path(data_dir) if data_dir else None,
            bool(getattr(config, "download", False)),
            verify_images=bool(getattr(config, "verify_images", False)),
        )
