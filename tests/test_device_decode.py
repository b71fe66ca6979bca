"""``--decode device``: JPEGs decoded in batches by torchvision's ``decode_jpeg`` and cropped on the device give the
worker path's batches (same boxes, labels, replacements and unreadable count; pixels within a stated tolerance),
deterministically by (seed, step); run here with the CPU as the device, and on CUDA where there is one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_engine.data.batches import BatchStream
from ssl_engine.data.crops import crop_random, random_resized_box
from ssl_engine.data.device_decode import (
    DeviceDecodedStream,
    FetchedCrops,
    decode_jpegs,
    decodes_on_device,
    training_stream,
)
from ssl_engine.data.file_backed import FileBackedImages
from ssl_engine.data.folder import image_folder
from ssl_engine.data.options import DataError
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.data.shards import ShardImages, index_shards
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli, run_cli
from tests.conftest import write_tar

CPU = torch.device("cpu")
SIZE = 16
# Tolerances against the worker path (PIL), in 8-bit levels. Where PIL decodes the JPEG whole, both resample with
# PIL's coefficients and differ only by rounding; where PIL decodes it at a reduced DCT scale, the device path
# averages blocks instead, which agrees on average but not pixel for pixel. Images the worker decodes are equal.
WHOLE_MAX = 2
DRAFTED_MEAN, DRAFTED_MAX = 1.0, 8
# nvJPEG's IDCT and chroma upsampling are not libjpeg's: a level or two more on CUDA.
CUDA_MEAN, CUDA_MAX = 3.0, 40


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth ``(height, width, 3)`` picture with mild noise, as JPEG-friendly as a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    f = rng.uniform(0.02, 0.1, 3)
    channels = [128 + 100 * np.sin(x * f[0] + y * f[1]), 128 + 100 * np.cos(y * f[2]), (x + y) * 255 / (width + height)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)


SIZES = [(40, 90), (120, 60), (200, 150), (64, 64), (150, 220), (90, 40), (33, 47), (256, 96)]


def jpeg_bytes(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(width, height, seed)).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_folder(folder: Path, *, damaged: bool = True) -> tuple[Path, set[str]]:
    """A folder whose train split holds two classes of JPEGs of mixed sizes and aspect ratios (RGB, one grayscale,
    one CMYK, one with bytes after its end marker), one PNG, and three unreadable files: a truncated JPEG, a 0-byte
    one and, unless ``damaged`` is false, one whose middle is damaged but that ends cleanly (PIL and libjpeg refuse
    it; nvJPEG may not). Returns the folder and the train names of the unreadable files."""
    root = folder / "train"
    for label in range(2):
        (root / f"c{label}").mkdir(parents=True)
        (folder / "val" / f"c{label}").mkdir(parents=True)
        (folder / "val" / f"c{label}" / "val.jpg").write_bytes(jpeg_bytes(40, 40, seed=40 + label))
        for number, (width, height) in enumerate(SIZES):
            (root / f"c{label}" / f"img{number}.jpg").write_bytes(jpeg_bytes(width, height, seed=10 * label + number))
    (root / "c0" / "gray.jpg").write_bytes(jpeg_bytes(80, 60, seed=30, mode="L"))
    (root / "c0" / "cmyk.jpg").write_bytes(jpeg_bytes(70, 90, seed=31, mode="CMYK"))
    (root / "c1" / "trailing.jpg").write_bytes(jpeg_bytes(100, 70, seed=32) + b"\0\0 trailing bytes")
    Image.fromarray(photo(50, 80, seed=33)).save(root / "c1" / "picture.png")
    whole = jpeg_bytes(120, 100, seed=34)
    (root / "c0" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "c1" / "empty.jpg").write_bytes(b"")
    if not damaged:
        return folder, {"train/c0/truncated.jpg", "train/c1/empty.jpg"}
    middle = bytearray(whole)
    middle[len(whole) // 2 : len(whole) // 2 + 300] = b"\xff" * 300
    (root / "c1" / "damaged.jpg").write_bytes(bytes(middle))
    return folder, {"train/c0/truncated.jpg", "train/c1/empty.jpg", "train/c1/damaged.jpg"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[FileBackedImages, set[str]]:
    root, bad = photo_folder(tmp_path_factory.mktemp("photos"))
    return image_folder(root, "train", SIZE), bad


def read(stream: BatchStream, steps: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = stream.batches(start)
    return [next(batches) for _ in range(steps)]


def check_against_worker_path(
    images: FileBackedImages, seed: int, steps: int, device: torch.device, mean: float, most: int
) -> DeviceDecodedStream:
    """Both paths over ``steps`` batches: same labels and unreadable files, pixels within the tolerances (``mean``
    and ``most`` for drafted JPEGs; on CUDA for every JPEG decoded there)."""
    worker = BatchStream(images, 4, seed, workers=0)
    on_device = DeviceDecodedStream(images, 4, seed, device=device, workers=0)
    fetch = FetchedCrops(images, seed)
    for step, ((expected, labels), (got, got_labels), indices) in enumerate(
        zip(read(worker, steps), read(on_device, steps), on_device.index_batches(0), strict=False)
    ):
        assert got.shape == (4, 3, SIZE, SIZE) and got.dtype == torch.uint8 and got.device.type == device.type
        assert torch.equal(labels, got_labels)
        for slot, (want, have, index) in enumerate(zip(expected, got.cpu(), indices, strict=True)):
            crop = fetch[(index, step, slot)].crop
            difference = (want.int() - have.int()).abs().float()
            if crop is None:  # decoded by PIL in the worker: the very same pixels
                assert torch.equal(want, have), (step, slot)
            elif crop.scale == 1 and device.type == "cpu":
                assert difference.max() <= WHOLE_MAX, (step, slot, difference.max())
            else:
                assert difference.mean() <= mean and difference.max() <= most, (step, slot, crop)
    assert list(on_device.unreadable.items()) == list(worker.unreadable.items())
    return on_device


def test_device_path_gives_the_worker_paths_batches_on_the_cpu(photos: tuple[FileBackedImages, set[str]]) -> None:
    images, bad = photos
    steps = 2 * (len(images) // 4)  # two epochs: every file read, the unreadable ones replaced
    stream = check_against_worker_path(images, seed=5, steps=steps, device=CPU, mean=DRAFTED_MEAN, most=DRAFTED_MAX)
    assert set(stream.unreadable.values()) == bad


def test_crop_boxes_are_the_worker_paths(photos: tuple[FileBackedImages, set[str]]) -> None:
    images, _ = photos
    fetch = FetchedCrops(images, seed=3)
    scales = set()
    for index in range(len(images)):
        fetched = fetch[(index, 7, index % 5)]
        if fetched.attempt or fetched.crop is None:  # replaced, or decoded in the worker
            continue
        with Image.open(images.source_of(index)) as image:
            expected = random_resized_box(*image.size, crop_random(3, 7, index % 5))
        assert fetched.crop.box == expected, images.name_of(index)
        assert (fetched.crop.width, fetched.crop.height) == image.size
        scales.add(fetched.crop.scale)
    assert 1 in scales and len(scales) > 1  # both whole and drafted JPEGs are covered


def test_batches_depend_only_on_seed_and_step(photos: tuple[FileBackedImages, set[str]]) -> None:
    images, _ = photos
    whole = read(DeviceDecodedStream(images, 4, seed=9, device=CPU, workers=0), 6)
    again = read(DeviceDecodedStream(images, 4, seed=9, device=CPU, workers=2), 6)
    resumed = read(DeviceDecodedStream(images, 4, seed=9, device=CPU, workers=2), 3, start=3)
    other = read(DeviceDecodedStream(images, 4, seed=10, device=CPU, workers=0), 6)
    for (a, la), (b, lb) in zip(whole, again, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, _), (b, _) in zip(whole[3:], resumed, strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(whole, other, strict=True))


def test_shards_read_by_offset_decode_on_the_device_too(tmp_path: Path) -> None:
    members = {}
    for number, (width, height) in enumerate(SIZES * 2):
        members[f"s{number:02d}.jpg"] = jpeg_bytes(width, height, seed=number)
        members[f"s{number:02d}.cls"] = str(number % 2).encode()
    members["s99.jpg"] = b""
    write_tar(tmp_path / "train-000000.tar", members)
    shard = str(tmp_path / "train-000000.tar")
    images = ShardImages(index_shards(shard), None, SIZE, shard)
    stream = check_against_worker_path(images, seed=1, steps=8, device=CPU, mean=DRAFTED_MEAN, most=DRAFTED_MAX)
    assert list(stream.unreadable.values()) == ["train-000000.tar:s99"]


def files_with_a_bad_one() -> list[torch.Tensor]:
    """Two JPEG files of 30 x 20 px with one that is no JPEG between them, as uint8 ``(bytes,)`` each."""
    good = [bytearray(jpeg_bytes(30, 20, seed)) for seed in range(2)]
    return [torch.frombuffer(data, dtype=torch.uint8) for data in (good[0], bytearray(b"no JPEG" * 20), good[1])]


def test_a_failing_batched_decode_is_retried_file_by_file() -> None:
    decoded = decode_jpegs(files_with_a_bad_one(), CPU, batched=True)
    assert decoded[1] is None
    for image in (decoded[0], decoded[2]):
        assert image is not None and image.shape == (3, 20, 30) and image.dtype == torch.uint8


def test_decode_option_is_resolved_by_data_and_device(photos: tuple[FileBackedImages, set[str]]) -> None:
    images, _ = photos
    in_memory = ShapesDataset("train", 16, size=8)
    assert not decodes_on_device("auto", CPU, images)  # the worker path, off CUDA
    assert not decodes_on_device("workers", CPU, images)
    assert decodes_on_device("device", CPU, images)
    assert not decodes_on_device("auto", CPU, in_memory)
    with pytest.raises(DataError, match="--decode device"):
        decodes_on_device("device", CPU, in_memory)
    with pytest.raises(DataError, match="--decode must be one of auto, workers, device"):
        decodes_on_device("gpu", CPU, images)
    assert isinstance(training_stream(images, 4, 0, decode_on_device=True, device=CPU), DeviceDecodedStream)
    assert type(training_stream(images, 4, 0, decode_on_device=False, device=CPU)) is BatchStream


def test_cli_refuses_decode_device_for_data_held_in_memory(tmp_path: Path) -> None:
    with cli_plugins():
        result = run_cli("pretrain", "--task", REFERENCE_TASK, "--data", KIT_DATA, "--decode", "device",
                         "--steps", "1", "--out", tmp_path / "R")  # fmt: skip
        unknown = run_cli("pretrain", "--task", REFERENCE_TASK, "--decode", "gpu", "--out", tmp_path / "R")
    assert result.exit_code == 2 and "--decode device" in result.output
    assert not (tmp_path / "R").exists()
    assert unknown.exit_code == 2 and "--decode" in unknown.output


@pytest.mark.slow
def test_pretrain_decodes_on_the_device_when_asked(tmp_path: Path) -> None:
    root, bad = photo_folder(tmp_path / "data")
    with cli_plugins():
        run = pretrain_cli(tmp_path, REFERENCE_TASK, "--data", root, "--decode", "device", "--device", "cpu",
                           "--image-size", SIZE, "--batch-size", 4, "--steps", 4, "--log-every", 2,
                           "--workers", 0)  # fmt: skip
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert 'decode = "device"' in (run / "config.toml").read_text()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_nvjpeg_gives_the_worker_paths_batches(tmp_path: Path) -> None:
    root, bad = photo_folder(tmp_path / "data", damaged=False)  # nvJPEG may decode what libjpeg refuses
    images = image_folder(root, "train", SIZE)
    cuda = torch.device("cuda")
    assert decodes_on_device("auto", cuda, images)  # the default on CUDA
    steps = 2 * (len(images) // 4)
    stream = check_against_worker_path(images, seed=5, steps=steps, device=cuda, mean=CUDA_MEAN, most=CUDA_MAX)
    assert set(stream.unreadable.values()) == bad
    decoded = decode_jpegs(files_with_a_bad_one(), cuda)  # one batched nvJPEG call, then file by file
    assert decoded[1] is None
    assert all(image is not None and image.is_cuda and image.shape == (3, 20, 30) for image in decoded[::2])
