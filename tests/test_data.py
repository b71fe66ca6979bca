"""Data sets other than the embedded one, on small data the tests make, and the base augmentation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_engine.data.augment import random_crop_flip
from ssl_engine.data.batches import BatchStream, epoch_order
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.folder import UnreadableImagesWarning, image_folder
from ssl_engine.data.idx_files import DEBIAN_FASHION_MNIST, fashion_mnist, read_idx
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.plugins import get_host
from ssl_engine.randomness import BatchRandom
from tests.conftest import write_images

REGISTRY = get_host().registry


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def test_labelled_folder_splits_are_disjoint_and_cover_everything(image_folder: Path) -> None:
    splits = {name: image_folder_split(image_folder, name) for name in ("train", "val", "test")}
    paths = {name: {p for p, _ in ds.files} for name, ds in splits.items()}
    assert sum(len(p) for p in paths.values()) == 90
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"] or paths["val"] & paths["test"])
    image, label = splits["train"][0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and label in (0, 1, 2)
    assert splits["train"].classes == ["ants", "bees", "cats"]


def image_folder_split(root: Path, split: str):  # type: ignore[no-untyped-def]
    return image_folder(root, split, 24)


def test_folder_with_train_and_test_subfolders(tmp_path: Path) -> None:
    for split, count in (("train", 10), ("test", 4)):
        for name in ("a", "b"):
            write_images(tmp_path / split / name, count)
    assert len(image_folder(tmp_path, "test", 16)) == 8
    assert len(image_folder(tmp_path, "train", 16)) + len(image_folder(tmp_path, "val", 16)) == 20


def test_flat_folder_is_unlabelled_and_grayscale_is_promoted(tmp_path: Path) -> None:
    from PIL import Image

    write_images(tmp_path, 3)
    Image.fromarray(np.full((10, 12), 77, np.uint8), mode="L").save(tmp_path / "gray.png")
    source = resolve_data(str(tmp_path), REGISTRY, DataOptions())
    assert not source.labelled
    dataset = source.split("train", 16)
    labels = {dataset[i][1] for i in range(len(dataset))}
    assert labels == {-1}
    gray = dataset[[p.name for p, _ in dataset.files].index("gray.png")][0]  # type: ignore[attr-defined]
    assert gray.shape == (3, 16, 16) and bool((gray == 77).all())
    with pytest.raises(DataError, match="unlabelled"):
        source.split("test", 16)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UnreadableImagesWarning, match="broken.png"), pytest.raises(DataError, match="no readable image"):
        image_folder(tmp_path, "train", 16, verify=True)
    with pytest.raises(DataError, match="no readable image.*broken.png"):  # listed only: named all the same
        image_folder(tmp_path, "train", 16)


def test_idx_reader_and_fashion_mnist_from_a_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:7], compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:7], compress=False)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    options = DataOptions(data_dir=tmp_path)
    test = fashion_mnist("test", 28, options)
    assert len(test) == 7
    image, label = test[3]
    assert image.shape == (3, 28, 28) and torch.equal(image[0], torch.from_numpy(images[3].astype(np.uint8)))
    assert label == labels[3]
    assert len(fashion_mnist("train", 28, options)) + len(fashion_mnist("val", 28, options)) == 50
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01"))
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package() -> None:
    test = fashion_mnist("test", 32, DataOptions(data_dir=Path("/nonexistent")))
    assert len(test) == 10000
    image, label = test[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10


def test_torchvision_mnist_on_files_the_test_writes(tmp_path: Path) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, count in (("train", 40), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count), compress=False)
    source = resolve_data("mnist", REGISTRY, DataOptions(data_dir=tmp_path))
    assert not source.color
    assert len(source.split("test", 32)) == 10
    assert len(source.split("train", 32)) == 36 and len(source.split("val", 32)) == 4
    assert source.split("train", 32)[0][0].shape == (3, 32, 32)


def test_missing_torchvision_data_says_how_to_get_it(tmp_path: Path) -> None:
    source = resolve_data("cifar10", REGISTRY, DataOptions(data_dir=tmp_path))
    with pytest.raises(DataError, match="--download"):
        source.split("train", 32)


def test_random_crop_flip_matches_a_plain_reference() -> None:
    images = torch.rand(6, 3, 16, 16)
    out = random_crop_flip(images, BatchRandom(0, 1, "aug", 6), padding=2)
    check = BatchRandom(0, 1, "aug", 6)
    offsets, flips = check.randint(0, 5, 2), check.bernoulli(0.5)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        y, x = offsets[i].tolist()
        expected = padded[i, :, y : y + 16, x : x + 16]
        if flips[i]:
            expected = padded[i, :, y : y + 16, x : x + 16].flip(-1)
        assert torch.equal(out[i], expected)
    assert out.shape == images.shape


def test_batch_stream_order_is_reproducible_and_resumable() -> None:
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2).contiguous()
    labels = torch.arange(40)
    stream = BatchStream(torch.utils.data.TensorDataset(images, labels), 8, seed=5, images=images, labels=labels)
    first = [labels for _, labels in zip(range(12), stream.batches(0), strict=False)]
    later = [labels for _, labels in zip(range(5), stream.batches(7), strict=False)]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first[7:], later, strict=True))
    assert torch.equal(torch.sort(torch.cat([b[1] for b in first[:5]])).values, torch.arange(40))
    assert not torch.equal(epoch_order(40, 5, 0), epoch_order(40, 5, 1))
    # two ranks split each global batch between them
    ranks = [
        BatchStream(
            torch.utils.data.TensorDataset(images, labels),
            4,
            5,
            rank=r,
            world=2,
            images=images,
            labels=labels,
        )
        for r in range(2)
    ]
    for (_, a), (_, b), (_, whole) in zip(ranks[0].batches(), ranks[1].batches(), stream.batches(), strict=False):
        assert torch.equal(torch.cat([a, b]), whole)
        break


def test_worker_stream_gives_the_in_memory_batches_across_epochs_and_from_a_resume_step() -> None:
    """Data sets too large for memory go through one DataLoader (its workers live for the whole run)."""
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2).contiguous()
    labels = torch.arange(40)
    dataset = torch.utils.data.TensorDataset(images, labels)
    held = BatchStream(dataset, 8, seed=3, images=images, labels=labels)
    read = BatchStream(dataset, 8, seed=3, workers=2)
    for start in (0, 3):  # 5 steps per epoch: both cross into the next epoch
        expected = [b for _, b in zip(range(9), held.batches(start), strict=False)]
        got = [b for _, b in zip(range(9), read.batches(start), strict=False)]
        for (held_images, held_labels), (read_images, read_labels) in zip(expected, got, strict=True):
            assert torch.equal(held_images, read_images) and torch.equal(held_labels, read_labels)
