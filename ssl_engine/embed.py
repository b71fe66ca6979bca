"""``sslx embed``: a run's representation of every image of a folder or data set, written with names and labels.

The features are those the evaluation protocols see: the run's representation in eval mode, on the evaluation view
of each image (file-backed data: short side resized, centre crop; small data sets: the ``S x S`` image). Files that
fail to decode are left out of the output and named (never given another image's features).

Output, chosen by the suffix of ``--out``:
    ``.npz``: ``features`` float32 ``(N, D)``, ``names`` str ``(N,)``, ``labels`` int64 ``(N,)`` (-1: unlabelled),
        ``classes`` str ``(C,)`` and ``meta`` (a JSON string: run, step, task, data, split, image size);
    ``.parquet`` (needs pyarrow: ``pip install 'sslx[parquet]'``): columns ``name``, ``label``, ``feature``
        (fixed-size list of float32), the same meta in the schema's metadata under ``sslx``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ssl_engine.checkpoint import CheckpointError
from ssl_engine.cli_common import cannot_write, device_option
from ssl_engine.data.catalog import DataSource, resolve_data
from ssl_engine.data.crops import center_box
from ssl_engine.data.file_backed import FileBackedImages
from ssl_engine.data.folder import ImageFiles, describe_folder, image_folder
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.distributed import pick_device
from ssl_engine.images import to_float
from ssl_engine.registry import Registry, UnknownNameError

SUFFIXES = (".npz", ".parquet")
ALL_SPLITS = ("train", "val", "test")


class EmbedError(ValueError):
    """The embedding can't be written as asked (bad --out suffix, pyarrow missing); the message says why."""


@dataclass(frozen=True)
class EmbedReport:
    """What ``sslx embed`` wrote."""

    path: Path
    count: int
    dimension: int
    unreadable: list[str]


class _Named(Dataset[tuple[torch.Tensor, int, bool]]):
    """``(image, label, decoded)`` of one split; a file that fails to decode gives zeros and ``False``."""

    def __init__(self, dataset: Dataset[tuple[torch.Tensor, int]], split: str, image_size: int) -> None:
        self.dataset, self.split, self.image_size = dataset, split, image_size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def name_of(self, index: int) -> str:
        if isinstance(self.dataset, FileBackedImages):
            return self.dataset.name_of(index)
        return f"{self.split}/{index}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        if isinstance(self.dataset, FileBackedImages):
            loaded = self.dataset.try_load(index, center_box)
            if isinstance(loaded, str):
                return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), -1, False
            return loaded[0], loaded[1], True
        image, label = self.dataset[index]
        return image, int(label), True


def split_datasets(source: DataSource, split: str, image_size: int) -> list[_Named]:
    """The data of ``split``; ``all``: every image of a folder once, or each split a data set has."""
    if split != "all":
        return [_Named(source.split(split, image_size), split, image_size)]
    path = getattr(source, "_path", None)
    if path is not None:
        return [_Named(_whole_folder(Path(path), image_size), "all", image_size)]
    parts = []
    for name in ALL_SPLITS:
        try:
            parts.append(_Named(source.split(name, image_size), name, image_size))
        except DataError:
            continue
    if not parts:
        raise DataError(f"data {source.name!r} has none of the splits {', '.join(ALL_SPLITS)}")
    return parts


def _whole_folder(path: Path, image_size: int) -> FileBackedImages:
    """Every image of a folder once, whatever its layout's splits (labelled ones keep their labels)."""
    layout = describe_folder(path)
    if layout == "unlabelled":
        return image_folder(path, "train", image_size)
    splits = list(ALL_SPLITS)
    if layout == "split":  # val held out of train when there is no val/; test only when there is a test/
        splits = [name for name in ALL_SPLITS if name != "test" or (path / "test").is_dir()]
    parts = [image_folder(path, name, image_size) for name in splits]
    files = sorted({(part.name_of(i), part.label_of(i)) for part in parts for i in range(len(part))})
    return ImageFiles(path, files, image_size, parts[0].classes, path)


def embed_run(
    run_dir: Path,
    out: Path,
    registry: Registry,
    *,
    data: str | None = None,
    split: str = "all",
    task: str | None = None,
    data_dir: Path | None = None,
    download: bool = False,
    batch_size: int = 256,
    workers: int = 2,
    device: str = "auto",
    progress: bool = True,
) -> EmbedReport:
    """Write the features of every image of ``data`` (default: the run's) to ``out``.

    Raises:
        EmbedError: ``out`` has another suffix than .npz/.parquet, or .parquet without pyarrow.
        CheckpointError, UnknownNameError, DataError: the run or the data can't be used.
    """
    if out.suffix not in SUFFIXES:
        raise EmbedError(f"--out {out}: the file must end in .npz or .parquet")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise EmbedError("writing .parquet needs pyarrow: pip install 'sslx[parquet]' (or write .npz)") from None
    from ssl_engine.run import load_run

    run = load_run(run_dir, registry, device=pick_device(device))
    options = DataOptions(data_dir if data_dir is not None else DataOptions.of_config(run.config).data_dir, download)
    data_name = data or run.config.data
    source = resolve_data(data_name, registry, options)
    representation = run.model.representation(task).eval()
    parts = split_datasets(source, split, run.image_size)
    total = sum(len(part) for part in parts)
    features: list[np.ndarray] = []
    names: list[str] = []
    labels: list[int] = []
    unreadable: list[str] = []
    bar = tqdm(total=total, desc="embed", unit="img", file=sys.stderr, disable=not progress)
    with torch.no_grad():
        for part in parts:
            loader = DataLoader(part, batch_size=batch_size, num_workers=workers, shuffle=False)
            start = 0
            for images, batch_labels, decoded in loader:
                kept = decoded.nonzero().flatten()
                for index in (~decoded).nonzero().flatten().tolist():
                    unreadable.append(part.name_of(start + index))
                if len(kept):
                    batch = to_float(images[kept].to(run.device))
                    features.append(representation(batch).float().cpu().numpy())
                    names += [part.name_of(start + int(i)) for i in kept]
                    labels += batch_labels[kept].tolist()
                start += len(images)
                bar.update(len(images))
    bar.close()
    if not features:
        raise DataError(f"no image of {data_name!r} could be decoded; nothing was written")
    matrix = np.concatenate(features).astype(np.float32)
    classes = list(getattr(parts[0].dataset, "classes", []) or [])
    meta = {"run": str(run_dir), "step": run.step, "task": task or run.config.tasks[0].name, "data": data_name,
            "split": split, "image_size": run.image_size, "classes": classes}  # fmt: skip
    _write(out, matrix, names, np.array(labels, dtype=np.int64), meta)
    return EmbedReport(out, len(names), matrix.shape[1], unreadable)


def _write(out: Path, features: np.ndarray, names: list[str], labels: np.ndarray, meta: dict[str, Any]) -> None:
    """Write to a temporary file beside ``out`` and rename it over ``out``: never a torn file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        if out.suffix == ".npz":
            with open(temporary, "wb") as handle:
                np.savez(handle, features=features, names=np.array(names, dtype=str), labels=labels,
                         classes=np.array(meta["classes"], dtype=str), meta=np.array(json.dumps(meta)))  # fmt: skip
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
            table = pa.table({"name": pa.array(names, pa.string()), "label": pa.array(labels), "feature": column})
            table = table.replace_schema_metadata({"sslx": json.dumps(meta)})
            pq.write_table(table, temporary)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", metavar="NAME|PATH", help="Folder, shard pattern or data set to embed [default: the run's].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="FILE.npz or FILE.parquet.")
@click.option("--split", default="all", show_default=True, help="train, val, test, or all (every image once).")
@click.option("--task", help="Whose representation, in a mixed run [default: the first task].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Where downloadable data sets live.")
@click.option("--download", is_flag=True, help="Allow downloading the data set.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 256), help="Decoding processes.")
@device_option("Where to compute the features.")
def embed(run_dir: Path, data: str | None, out: Path, split: str, task: str | None, data_dir: Path | None,
          download: bool, batch_size: int, workers: int, device: str) -> None:  # fmt: skip
    """Write a run's features of every image of a folder (or data set split), with names and labels.

    \b
    Examples:
      sslx embed runs/rot --data ~/photos --out photos.npz
      sslx embed runs/rot --data cifar10 --split test --out cifar-test.parquet
    """
    from ssl_engine.plugins import get_host

    try:
        report = embed_run(run_dir, out, get_host().registry, data=data, split=split, task=task, data_dir=data_dir,
                           download=download, batch_size=batch_size, workers=workers, device=device)  # fmt: skip
    except (EmbedError, CheckpointError, UnknownNameError, DataError) as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)
    except OSError as error:
        cannot_write(f"--out {out}", error)
    if report.unreadable:
        first = ", ".join(report.unreadable[:5]) + (
            f" and {len(report.unreadable) - 5} more" if len(report.unreadable) > 5 else ""
        )
        click.echo(f"warning: left out {len(report.unreadable)} unreadable image(s): {first}", err=True)
    click.echo(f"wrote {report.path}: {report.count} images x {report.dimension} features")
