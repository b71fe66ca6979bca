"""Resolving ``--data NAME|PATH`` to the data sets of each split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ssl_engine.data.folder import describe_folder, image_folder
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.data.shards import ShardIndex, index_shards, looks_like_shards, shard_split
from ssl_engine.registry import NameConflictError, Registered, Registry, UnknownNameError

DEFAULT_DATA = "shapes"
FILE_BACKED_IMAGE_SIZE = 224
FILE_BACKED_CPU_IMAGE_SIZE = 96


@dataclass(frozen=True)
class DataSource:
    """One data set, by registered name or folder path.

    Attributes:
        name: the registered name, or the folder path as given.
        labelled: whether its splits carry labels (evaluation needs them).
        color: whether its images are colour (grayscale ones are promoted to RGB, but colour tasks refuse them).
        pretrain_split: the split pretraining reads (e.g. STL-10's ``unlabeled``).
    """

    name: str
    labelled: bool
    color: bool
    pretrain_split: str
    options: DataOptions
    _factory: Any = None
    _path: Path | None = None
    _shards: ShardIndex | None = None

    @property
    def file_backed(self) -> bool:
        """Whether this data set is file-backed (a folder, shards): decoded in workers, aspect-preserving crops."""
        return self._path is not None or self._shards is not None

    def default_image_size(self, task_default: int, device: torch.device) -> int:
        """The image size when ``--image-size`` is not given: the tasks' default for small registered sets; for
        file-backed ones (photographs) :data:`FILE_BACKED_IMAGE_SIZE` on CUDA, the size linear-probe and k-NN
        figures of the field are reported at (torchvision, lightly, solo-learn), and
        :data:`FILE_BACKED_CPU_IMAGE_SIZE` elsewhere (STL-10's size: about 5x fewer pixels, for CPU budgets);
        never below the tasks' own default."""
        if not self.file_backed:
            return task_default
        preferred = FILE_BACKED_IMAGE_SIZE if device.type == "cuda" else FILE_BACKED_CPU_IMAGE_SIZE
        return max(task_default, preferred)

    def split(self, split: str, image_size: int) -> Dataset[tuple[torch.Tensor, int]]:
        """The data set of ``split`` with images ``(3, image_size, image_size)``."""
        if self._shards is not None:
            return shard_split(self.name, self._shards, split, image_size, self.options.val_fraction)
        if self._path is not None:
            return image_folder(
                self._path, split, image_size, self.options.val_fraction, verify=self.options.verify_images
            )
        dataset: Dataset[tuple[torch.Tensor, int]] = self._factory(split, image_size, self.options)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DataError(f"the {split} split of data set {self.name!r} is empty")
        return dataset


def resolve_data(data: str, registry: Registry, options: DataOptions) -> DataSource:
    """A registered name, else an existing path; otherwise :class:`UnknownNameError` listing the names.

    A name that several distributions register is refused (it belongs to none of them until one is disabled), even
    when a folder of that name exists: which data a run reads must not depend on the plugins installed.

    Raises:
        NameConflictError: several distributions register ``data`` (the message names them and how to disable one).
        UnknownNameError: ``data`` is neither registered nor a path that exists.
        DataError: the path exists but holds no usable images.
    """
    entry = registered_dataset(data, registry)
    if entry is not None:
        return DataSource(
            data,
            labelled=bool(entry.meta.get("labelled", True)),
            color=bool(entry.meta.get("color", True)),
            pretrain_split=str(entry.meta.get("pretrain_split", "train")),
            options=options,
            _factory=entry.obj,
        )
    if looks_like_shards(data):
        index = index_shards(data)
        return DataSource(data, index.labelled, True, "train", options, _shards=index)
    looks_like_path = "/" in data or data.startswith(".") or Path(data).exists()
    if not looks_like_path:
        raise UnknownNameError("data set", data, registry.names("dataset") + ["<path to an image folder>"])
    path = Path(data).expanduser()
    layout = describe_folder(path)
    return DataSource(
        str(path),
        labelled=layout != "unlabelled",
        color=True,
        pretrain_split="train",
        options=options,
        _path=path,
    )


def registered_dataset(name: str, registry: Registry) -> Registered | None:
    """The data set registered as ``name``, or ``None`` when nobody registered it.

    Raises:
        NameConflictError: several distributions register ``name``.
    """
    try:
        return registry.get("dataset", name)
    except NameConflictError:
        raise
    except UnknownNameError:
        return None
