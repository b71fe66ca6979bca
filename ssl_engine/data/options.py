"""Options every data-set factory receives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """The data can't be used (missing path, empty folder, not downloaded, no labels); the message says why."""


@dataclass(frozen=True)
class DataOptions:
    """Where data lives and whether it may be downloaded.

    Attributes:
        data_dir: root folder for downloadable data sets (``--data-dir``); ``None`` means ``~/.cache/sslx/data``.
        download: allow torchvision to download (``--download``).
        val_fraction: share of a train split held out as validation when the data set has no val split.
    """

    data_dir: Path | None = None
    download: bool = False
    val_fraction: float = 0.1

    @property
    def root(self) -> Path:
        return self.data_dir if self.data_dir is not None else Path.home() / ".cache" / "sslx" / "data"
