"""Folders at scale (issue 18): opened by listing, unreadable files skipped when loaded, aspect-preserving crops
keyed by (seed, step, slot), data locations as torchvision users have them."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_engine.data import file_backed
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.crops import CROP_RATIO, CROP_SCALE, Box, center_box, crop_to_tensor, random_resized_box
from ssl_engine.data.folder import image_folder
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.plugins import get_host
from ssl_engine.testing import REFERENCE_TASK
from tests.conftest import write_images, write_two_classes


def folder_with_bad_files(root: Path) -> tuple[Path, set[str]]:
    write_two_classes(root, per_class=12, size=24)
    (root / "c0" / "img005.png").write_bytes(b"")  # zero bytes, in the middle
    good = (root / "c1" / "img003.png").read_bytes()
    (root / "c1" / "img004.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "c1" / "img007.png").write_bytes(b"not an image at all")
    return root, {"c0/img005.png", "c1/img004.png", "c1/img007.png"}


def test_opening_a_folder_lists_it_and_decodes_one_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, bad = folder_with_bad_files(tmp_path / "data")
    opened: list[str] = []
    original = file_backed.open_image
    monkeypatch.setattr(file_backed, "open_image", lambda source: opened.append(str(source)) or original(source))
    dataset = image_folder(root, "train", 16)
    assert len(opened) == 1  # the check that the folder has a readable image at all
    assert len(dataset) == 20 and not dataset.skipped  # 80% of 24, bad files included: nothing decoded yet


def test_unreadable_files_are_replaced_deterministically_and_counted(tmp_path: Path) -> None:
    root, bad = folder_with_bad_files(tmp_path / "data")
    dataset = image_folder(root, "train", 16)
    names = {dataset.name_of(i) for i in range(len(dataset))}
    assert bad <= names | {"c0/img005.png"}

    def read(start: int, steps: int, workers: int) -> tuple[list[torch.Tensor], dict[int, str]]:
        stream = BatchStream.for_dataset(dataset, 4, seed=7, workers=workers)
        batches = stream.batches(start)
        got = [
            torch.cat([images.flatten(), labels.float()]) for images, labels in (next(batches) for _ in range(steps))
        ]
        return got, stream.unreadable

    whole, unreadable = read(0, 10, workers=0)  # two epochs of 5 steps
    assert set(unreadable.values()) == {name for name in bad if name in names}
    assert all(len(batch) == 4 * 3 * 16 * 16 + 4 for batch in whole)
    again, _ = read(0, 10, workers=2)
    resumed, _ = read(3, 7, workers=2)
    assert all(torch.equal(a, b) for a, b in zip(whole, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(whole[3:], resumed, strict=True))


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_run_names_unreadable_files_at_the_end_and_in_metrics(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, bad = folder_with_bad_files(tmp_path / "data")
    run = tmp_path / "R"
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--data", root, "--image-size", "16", "--batch-size", "4",
                    "--steps", "10", "--log-every", "5", "--no-probe", "--workers", "0", "--out", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "data/unreadable" in lines[0]
    final = lines[-1]
    assert final["data/unreadable"] >= 1 and set(final["data/unreadable_first"]) <= bad
    assert "unreadable image(s) while training" in result.output and final["data/unreadable_first"][0] in result.output
    assert "Traceback" not in result.output


def test_random_resized_box_follows_torchvision_rule() -> None:
    flips = 0
    for trial in range(400):
        rng = random.Random(trial)
        width, height = rng.randint(200, 600), rng.randint(200, 600)
        box = random_resized_box(width, height, random.Random(trial))
        assert 0 <= box.left and box.left + box.width <= width and 0 <= box.top and box.top + box.height <= height
        fraction = box.width * box.height / (width * height)
        assert CROP_SCALE[0] * 0.8 <= fraction <= 1.0
        assert CROP_RATIO[0] * 0.85 <= box.width / box.height <= CROP_RATIO[1] * 1.15
        flips += box.flip
    assert 150 < flips < 250
    narrow = random_resized_box(1000, 10, random.Random(0))  # no try fits: the central crop of the widest ratio
    assert (narrow.height, narrow.width, narrow.left) == (10, round(10 * 4 / 3), (1000 - 13) // 2)


def test_evaluation_view_keeps_the_aspect_ratio_and_crops_the_centre(tmp_path: Path) -> None:
    stripes = np.zeros((100, 300, 3), np.uint8)
    stripes[:, :100, 0] = stripes[:, 100:200, 1] = stripes[:, 200:, 2] = 255  # red | green | blue
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    image = image_folder(tmp_path, "train", 32)[0][0]
    assert image.shape == (3, 32, 32)
    assert bool((image[1] > 200).all()) and bool((image[0] < 50).all())  # only the green centre; a squash shows all 3


def test_jpeg_decoded_at_a_reduced_scale_matches_the_full_decode(tmp_path: Path) -> None:
    y, x = np.mgrid[0:600, 0:800]
    smooth = np.stack([x * 255 / 800, y * 255 / 600, (x + y) * 255 / 1400], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    box = Box(100, 50, 640, 480)
    with Image.open(tmp_path / "big.jpg") as image:
        reduced = crop_to_tensor(image, box, 64)  # decoded at 1/4 scale
        assert image.size == (200, 150)
    with Image.open(tmp_path / "big.jpg") as image:
        image.load()
        full = crop_to_tensor(image, box, 64)
    assert (reduced.float() - full.float()).abs().mean() < 2.0


def test_crops_are_the_same_for_one_and_two_processes(tmp_path: Path) -> None:
    root = write_two_classes(tmp_path / "data", per_class=16, size=24)
    dataset = image_folder(root, "train", 16)
    whole = BatchStream.for_dataset(dataset, 8, seed=3, workers=0).batches(2)
    ranks = [BatchStream.for_dataset(dataset, 4, seed=3, workers=0, rank=r, world=2).batches(2) for r in (0, 1)]
    for _ in range(4):
        images, labels = next(whole)
        (first, first_labels), (second, second_labels) = next(ranks[0]), next(ranks[1])
        assert torch.equal(torch.cat([first, second]), images)
        assert torch.equal(torch.cat([first_labels, second_labels]), labels)


def test_regimes_and_their_base_augmentation(tmp_path: Path) -> None:
    write_images(tmp_path, 12, size=40)
    from ssl_engine.randomness import BatchRandom

    files = BatchStream.for_dataset(image_folder(tmp_path, "train", 16), 4, seed=0, workers=0)
    small = BatchStream.for_dataset(ShapesDataset("train", 16, size=12), 4, seed=0, workers=0)
    assert files.file_backed and not small.file_backed and small.images is not None
    batch = torch.rand(4, 3, 16, 16)
    assert files.base_augment(batch, BatchRandom(0, 0, "base-augment", 4)) is batch  # cropped in the workers
    assert not torch.equal(small.base_augment(batch, BatchRandom(0, 0, "base-augment", 4)), batch)


def test_center_box_is_resize_short_side_then_centre_crop() -> None:
    box = center_box(400, 300)
    assert math.isclose(box.width, 300 * 0.875) and math.isclose(box.left, (400 - 262.5) / 2)


def test_classes_differing_between_train_and_val_are_named(tmp_path: Path) -> None:
    for split, classes in (("train", ("a", "b")), ("val", ("a", "c"))):
        for name in classes:
            write_images(tmp_path / split / name, 3)
    with pytest.raises(DataError, match=r"classes not in .*train: c"):
        image_folder(tmp_path, "val", 16)


def test_mixed_modes_and_a_bomb_in_the_middle_are_converted_or_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_bad_images import write_bomb_png

    write_images(tmp_path, 4, size=20)
    Image.fromarray(np.full((20, 30), 90, np.uint8), mode="L").save(tmp_path / "b_gray.png")
    Image.fromarray(np.full((20, 20, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "b_rgba.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "b_deep.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(tmp_path / "b_cmyk.jpg")
    write_bomb_png(tmp_path / "b_bomb.png")
    dataset = image_folder(tmp_path, "train", 16)
    by_name = {dataset.name_of(i): i for i in range(len(dataset))}
    assert bool((dataset[by_name["b_gray.png"]][0] == 90).all())
    assert bool((dataset[by_name["b_deep.png"]][0] == 255).all())
    assert dataset[by_name["b_rgba.png"]][0].shape == (3, 16, 16)
    assert bool((dataset[by_name["b_cmyk.jpg"]][0] > 250).all())  # CMYK 0,0,0,0 is white
    with pytest.warns(file_backed.UnreadableImagesWarning, match="b_bomb.png"):
        replaced, _ = dataset[by_name["b_bomb.png"]]
    assert replaced.shape == (3, 16, 16)


REGISTRY = get_host().registry


def test_sslx_data_dir_sets_the_default_and_torchvision_layout_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_data import write_idx

    raw = tmp_path / "MNIST" / "raw"  # torchvision's own layout, directly under the data dir
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count), compress=False)
    monkeypatch.setenv("SSLX_DATA_DIR", str(tmp_path))
    assert DataOptions().root == tmp_path
    assert len(resolve_data("mnist", REGISTRY, DataOptions()).split("test", 28)) == 10
    assert len(resolve_data("mnist", REGISTRY, DataOptions(data_dir=tmp_path)).split("test", 28)) == 10
    monkeypatch.delenv("SSLX_DATA_DIR")
    assert DataOptions().root == Path.home() / ".cache" / "sslx" / "data"


def test_missing_data_names_both_layouts_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SSLX_DATA_DIR") as caught:
        resolve_data("cifar10", REGISTRY, DataOptions(data_dir=tmp_path)).split("train", 32)
    assert "cifar-10-batches-py" in str(caught.value)


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_folders_default_to_a_photograph_size_kept_for_resume(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import tomllib

    write_images(tmp_path / "flat", 8, size=40)
    run = tmp_path / "R"
    args = ("pretrain", "--task", REFERENCE_TASK, "--data", tmp_path / "flat", "--batch-size", "4", "--no-probe",
            "--workers", "0", "--device", "cpu", "--out", run)  # fmt: skip
    first = invoke(*args, "--steps", "1")
    assert first.exit_code == 0, first.output
    assert "(96 px)" in first.output  # the CPU default for file-backed data
    assert tomllib.loads((run / "config.toml").read_text())["image_size"] == 96
    resumed = invoke(*args, "--steps", "2", "--resume")
    assert resumed.exit_code == 0, resumed.output
