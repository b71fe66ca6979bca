"""WebDataset tar shards (``--data "shards/train-{000000..000127}.tar"``): file-backed data for many machines.

A shard is a plain tar file in WebDataset's layout: the members of one sample share a key (the member name up to
the first dot of its base name) and differ by extension: an image (``.jpg``, ``.png``, ...), a label (``.cls``,
a decimal integer) and anything else (ignored). ``sslx shard FOLDER --out DIR`` writes such shards from a folder;
shards written by ``webdataset.TarWriter`` or ``tar`` itself read the same. Brace patterns need the ``webdataset``
extra (``pip install 'sslx[shards]'``, which brings ``braceexpand``); a single ``.tar`` or a glob does not.

On opening, every shard's tar headers are read (not the images: a seek per member) into an index of where each
sample's image lies; samples are then read by offset, in DataLoader workers, as any file-backed data
(:mod:`ssl_engine.data.file_backed`): random-resized crops keyed by (seed, step, place in the global batch), a file
that fails to decode replaced deterministically and counted. Reading by offset rather than streaming each shard
with a shuffle buffer is what makes the order a function of (seed, epoch) and a resume exact mid-epoch (the step
says where the run is; nothing else needs saving), and lets every rank and worker read only its own samples:

* each epoch, the shards are shuffled (seed, epoch) and taken :data:`SHARDS_PER_GROUP` at a time; the samples of a
  group are shuffled together, so consecutive batches read from a few shards (locality, as WebDataset's shard
  shuffling with a sample buffer gives) and each batch mixes several;
* each global batch is cut into one slice per rank (as for every data set), and each step's slice is read by one
  DataLoader worker: every sample is read once per epoch across all ranks and workers (all but the last
  ``count % global batch``, which change from epoch to epoch).

Splits: ``train`` is the pattern's shards; ``val`` and ``test`` are the shards whose names replace ``train`` by
``val`` or ``test`` (any number of them), when they exist (else val is held out of train, deterministically, and
test is refused).
Class names come from a ``classes.txt`` beside the shards (one per line) when there is one.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssl_engine.data.file_backed import FileBackedImages, UnreadableImagesWarning
from ssl_engine.data.options import DataError
from ssl_engine.data.resized import holdout_split
from ssl_engine.randomness import mix_seed

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm"})
SHARDS_PER_GROUP = 8
CLASSES_FILE = "classes.txt"


class ShardWarning(UserWarning):
    """A shard is empty, truncated or holds samples without an image; the rest of the shards are used."""


def looks_like_shards(data: str) -> bool:
    """Whether ``--data`` names tar shards (one ``.tar``, a brace pattern or a glob of them)."""
    return data.rstrip("/").endswith(".tar") or (".tar" in data and any(c in data for c in "{*?["))


def expand(pattern: str) -> list[Path]:
    """The shard files of ``pattern``, in order.

    Raises:
        DataError: braces without the ``webdataset`` extra, or files of the pattern that do not exist.
    """
    if "{" in pattern:
        try:
            from braceexpand import braceexpand
        except ImportError:
            raise DataError(
                f"shard pattern {pattern!r} uses braces, which need the webdataset extra: pip install 'sslx[shards]'"
            ) from None
        names = list(braceexpand(os.path.expanduser(pattern)))
    elif any(c in pattern for c in "*?["):
        names = sorted(glob.glob(os.path.expanduser(pattern)))
        if not names:
            raise DataError(f"shard pattern {pattern!r} matches no file")
    else:
        names = [os.path.expanduser(pattern)]
    paths = [Path(name) for name in names]
    missing = [path for path in paths if not path.is_file()]
    if missing and len(missing) == len(paths):
        raise DataError(f"shard pattern {pattern!r} matches no file (the first it names: {paths[0]})")
    if missing:
        first = ", ".join(str(path) for path in missing[:3])
        raise DataError(f"{len(missing)} of the {len(paths)} shards of {pattern!r} do not exist: {first} ...")
    return paths


@dataclass
class ShardIndex:
    """Where every sample's image lies: shard number, byte offset and size, label and key, one array each."""

    shards: list[Path]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    key: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def labelled(self) -> bool:
        return bool(len(self.label)) and bool((self.label >= 0).all())


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's key and extension of a member: ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _scan(path: Path) -> tuple[list[tuple[int, int, int, str]], str | None]:
    """``(offset, size, label, key)`` of each sample of one shard with an image, and what went wrong, if anything."""
    samples: dict[str, dict[str, object]] = {}
    problem: str | None = None
    file_size = path.stat().st_size
    if file_size == 0:
        return [], "is empty (0 bytes)"
    try:
        with tarfile.open(path, "r:") as tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.ReadError, EOFError, OSError) as error:
                    problem = f"is truncated or damaged after {len(samples)} samples ({error})"
                    break
                if member is None:
                    # A tar ends with zero blocks; one cut at a block boundary just stops, without them.
                    with open(path, "rb") as handle:
                        handle.seek(tar.offset)
                        if len(handle.read(512)) < 512:
                            problem = f"is truncated (no end-of-archive blocks after {len(samples)} samples)"
                    break
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_size:
                    problem = f"is truncated in {member.name}"
                    break
                key, extension = _split_name(member.name)
                sample = samples.setdefault(key, {})
                last = extension.rsplit(".", 1)[-1]
                if last in IMAGE_EXTENSIONS and "image" not in sample:
                    sample["image"] = (member.offset_data, member.size)
                elif extension == "cls":
                    content = tar.extractfile(member)
                    text = content.read(64).decode("ascii", "replace").strip() if content is not None else ""
                    sample["label"] = int(text) if text.lstrip("-").isdigit() else -1
    except tarfile.ReadError as error:
        return [], f"is not a tar file ({error})"
    found = []
    without_image = 0
    for key, sample in samples.items():
        if "image" not in sample:
            without_image += 1
            continue
        where: tuple[int, int] = sample["image"]  # type: ignore[assignment]
        label: int = sample.get("label", -1)  # type: ignore[assignment]
        found.append((where[0], where[1], label, key))
    if without_image and problem is None:
        problem = f"has {without_image} sample(s) without an image member (skipped)"
    return found, problem


def index_shards(pattern: str) -> ShardIndex:
    """Read the tar headers of every shard of ``pattern``.

    Raises:
        DataError: no file matches, or no shard holds a sample with an image.
    """
    paths = expand(pattern)
    columns: list[list[int]] = [[], [], [], []]
    keys: list[bytes] = []
    problems = []
    for number, path in enumerate(paths):
        found, problem = _scan(path)
        if problem is not None:
            problems.append(f"{path.name} {problem}")
        for offset, size, label, key in found:
            for column, value in zip(columns, (number, offset, size, label), strict=True):
                column.append(value)
            keys.append(key.encode("utf-8", "surrogateescape"))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        warnings.warn(f"shards of {pattern}: {'; '.join(problems[:3])}{more}", ShardWarning, stacklevel=2)
    if not keys:
        raise DataError(f"the {len(paths)} shard(s) of {pattern!r} hold no sample with an image member")
    labels = np.array(columns[3], dtype=np.int64)
    classes_file = paths[0].parent / CLASSES_FILE
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1)] if (labels >= 0).any() else []
    return ShardIndex(
        paths,
        np.array(columns[0], dtype=np.int32),
        np.array(columns[1], dtype=np.int64),
        np.array(columns[2], dtype=np.int64),
        labels,
        np.array(keys, dtype=bytes),
        classes,
    )


class ShardImages(FileBackedImages):
    """The samples ``rows`` of an index, read by offset (each process opens the shards it reads, once).

    Args:
        index: the shards' index.
        rows: the samples of this split, in index order (all when ``None``).
        image_size: ``S``.
        where: the pattern, for messages.
    """

    def __init__(self, index: ShardIndex, rows: np.ndarray | None, image_size: int, where: str) -> None:
        super().__init__(image_size, index.classes, where)
        self.index = index
        self.rows = np.arange(len(index)) if rows is None else np.asarray(rows, dtype=np.int64)
        self._files: dict[int, object] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, shard: int) -> io.BufferedReader:
        if self._pid != os.getpid():  # a forked worker: its own file objects, not the parent's shared offsets
            self._files, self._pid = {}, os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            handle = open(self.index.shards[shard], "rb")  # noqa: SIM115 - kept open for the process's life
            self._files[shard] = handle
        return handle  # type: ignore[return-value]

    def source_of(self, index: int) -> io.BytesIO:
        row = self.rows[index]
        handle = self._file(int(self.index.shard[row]))
        handle.seek(int(self.index.offset[row]))
        return io.BytesIO(handle.read(int(self.index.size[row])))

    def label_of(self, index: int) -> int:
        return int(self.index.label[self.rows[index]])

    def name_of(self, index: int) -> str:
        row = self.rows[index]
        return f"{self.index.shards[int(self.index.shard[row])].name}:{os.fsdecode(self.index.key[row])}"

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """Shards shuffled by (seed, epoch), taken :data:`SHARDS_PER_GROUP` at a time, the samples of each group
        shuffled together."""
        shard_of = torch.from_numpy(self.index.shard[self.rows].astype(np.int64))
        count = len(self.index.shards)
        shard_order = torch.randperm(count, generator=_generator(seed, "shard-order", epoch))
        rank_of_shard = torch.empty(count, dtype=torch.long)
        rank_of_shard[shard_order] = torch.arange(count)
        group_of = rank_of_shard[shard_of] // SHARDS_PER_GROUP  # (N,)
        # Sort by group, ties broken by a random key: the samples of a group in a random order.
        noise = torch.rand(len(self.rows), generator=_generator(seed, "shard-samples", epoch), dtype=torch.float64)
        return torch.argsort(group_of.double() + noise * 0.5, stable=True)

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, -1  # open files do not travel to spawned workers
        return state


def _generator(seed: int, stream: str, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, stream, epoch))


def sibling_pattern(pattern: str, split: str) -> str | None:
    """The glob of ``split``'s shards (``train`` replaced in the file name, brace ranges by ``*``), ``None`` when
    the name has no ``train``."""
    folder, _, name = pattern.rpartition("/")
    if "train" not in name:
        return None
    # Any number of them: the brace ranges of train's shards become a glob.
    name = re.sub(r"\{[^}]*\}", "*", name.replace("train", split))
    return f"{folder}/{name}" if folder else name


def _exists(pattern: str) -> bool:
    try:
        expand(pattern)
    except DataError:
        return False
    return True


def shard_split(pattern: str, index: ShardIndex, split: str, image_size: int, val_fraction: float) -> ShardImages:
    """The ``split`` of the shards of ``pattern`` (whose index is ``index``), as the module docstring says."""
    if split not in ("train", "val", "test"):
        raise DataError(f"shards have the splits train, val and test; got {split!r}")
    sibling = {name: sibling_pattern(pattern, name) for name in ("val", "test")}
    has = {name: other is not None and _exists(other) for name, other in sibling.items()}
    if split == "train":
        rows = None if has["val"] else holdout_split(len(index), val_fraction, "train")
        return ShardImages(index, None if rows is None else np.array(rows), image_size, pattern)
    if has[split]:
        other = str(sibling[split])
        with warnings.catch_warnings():
            warnings.simplefilter("always", ShardWarning)
            return ShardImages(index_shards(other), None, image_size, other)
    if split == "test":
        raise DataError(f"no test shards for {pattern!r} (looked for {sibling['test'] or 'a name with train in it'})")
    return ShardImages(index, np.array(holdout_split(len(index), val_fraction, "val")), image_size, pattern)


__all__ = ["ShardImages", "ShardIndex", "ShardWarning", "UnreadableImagesWarning", "index_shards", "shard_split"]
