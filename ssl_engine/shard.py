"""``sslx shard FOLDER --out DIR``: a folder of images written as WebDataset tar shards, labels kept.

Each split the folder has (``train``, ``val``, ``test``: its own subfolders, or the deterministic held-out ones of a
class-subfolder layout) becomes ``DIR/SPLIT-000000.tar``, ``DIR/SPLIT-000001.tar``, ... of ``--shard-size``
samples, in an order shuffled by ``--seed`` (shards of consecutive files would hold one class each). A sample is the
image file's bytes as they are (``KEY.jpg``, ``KEY.png``, ...; nothing is decoded or re-encoded), ``KEY.cls`` (the
label, when labelled) and ``KEY.json`` (the file's name in the folder, its label and class). The class names go to
``DIR/classes.txt``. Train on them with ``--data "DIR/train-{000000..NNNNNN}.tar"`` (printed at the end).

Needs the ``webdataset`` extra (``pip install 'sslx[shards]'``), whose ``TarWriter`` writes the shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from ssl_engine.cli_common import cannot_write, fail
from ssl_engine.data.folder import ImageFiles, describe_folder, image_folder
from ssl_engine.data.options import DataError
from ssl_engine.data.shards import CLASSES_FILE
from ssl_engine.randomness import mix_seed


@dataclass(frozen=True)
class WrittenSplit:
    """One split's shards: how many samples, and the pattern that reads them."""

    split: str
    samples: int
    pattern: str


def _splits(folder: Path) -> list[str]:
    layout = describe_folder(folder)
    if layout == "unlabelled":
        return ["train"]
    if layout == "split" and not (folder / "test").is_dir():
        return ["train", "val"]
    return ["train", "val", "test"]


def write_shards(folder: Path, out: Path, shard_size: int, seed: int = 0) -> list[WrittenSplit]:
    """Write the shards of every split of ``folder`` into ``out``.

    Raises:
        DataError: the folder can't be read as a data set, ``out`` already holds shards, or webdataset is missing.
    """
    try:
        from webdataset import TarWriter
    except ImportError:
        raise DataError("sslx shard needs the webdataset extra: pip install 'sslx[shards]'") from None
    splits = _splits(folder)
    out.mkdir(parents=True, exist_ok=True)
    taken = sorted(p.name for p in out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    if taken:
        raise DataError(f"{out} already holds shards ({taken[0]}, ...); pick another --out or empty it")
    written = []
    classes: list[str] = []
    for split in splits:
        files: ImageFiles = image_folder(folder, split, 32)  # listed only: the size is not used
        classes = classes or files.classes
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(mix_seed(seed, "shard", split)))
        shard_count = (len(files) + shard_size - 1) // shard_size
        for number in range(shard_count):
            path = out / f"{split}-{number:06d}.tar"
            with open(path, "wb") as handle, TarWriter(handle, encoder=False) as writer:
                for position in order[number * shard_size : (number + 1) * shard_size].tolist():
                    source = files.path_of(position)
                    label = files.label_of(position)
                    extension = source.suffix.lower().lstrip(".")
                    sample = {"__key__": f"{position:09d}", extension: source.read_bytes()}
                    meta = {"name": files.name_of(position), "label": label}
                    if label >= 0:
                        sample["cls"] = str(label).encode()
                        meta["class"] = files.classes[label]
                    sample["json"] = json.dumps(meta).encode()
                    writer.write(sample)
        last = max(shard_count - 1, 0)
        pattern = (
            str(out / f"{split}-{{000000..{last:06d}}}.tar") if shard_count > 1 else str(out / f"{split}-000000.tar")
        )
        written.append(WrittenSplit(split, len(files), pattern))
    if classes:
        (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in classes))
    return written


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the shards.")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(1), help="Samples per shard.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the order the samples are written in.")
def shard(folder: Path, out: Path, shard_size: int, seed: int) -> None:
    """Write a folder of images as WebDataset tar shards (labels kept), for sharded streaming.

    \b
    Examples:
      sslx shard ~/photos --out ~/shards --shard-size 1000
      sslx pretrain --task simclr --data "~/shards/train-{000000..000049}.tar"
    """
    try:
        written = write_shards(folder, out, shard_size, seed)
    except DataError as error:
        fail(error)
    except OSError as error:
        cannot_write(f"shards into {out}", error)
    for split in written:
        click.echo(f"{split.split}: {split.samples} samples -> --data {_quoted(split.pattern)}")


def _quoted(pattern: str) -> str:
    return f'"{pattern}"' if any(c in pattern for c in "{} ") or os.sep not in pattern else pattern
