"""Bad input images in a folder data set: decoded where possible, otherwise skipped, counted and named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_engine.data.folder import UnreadableImagesWarning, image_folder
from ssl_engine.data.options import DataError
from tests.conftest import write_images


def bad_folder(root: Path) -> Path:
    write_images(root, 12, size=20)
    (root / "zero.png").write_bytes(b"")
    (root / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    good = (root / "img000.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.full((20, 20), 200, np.uint8), mode="L").save(root / "gray.png")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")
    Image.fromarray(np.full((20, 20), 32896, np.uint16)).save(root / "deep16.png")  # 32896 / 65535 = 128 / 255
    Image.fromarray(np.full((2, 2, 3), 50, np.uint8)).save(root / "tiny.png")
    return root


def test_unreadable_files_are_skipped_counted_and_named(tmp_path: Path) -> None:
    root = bad_folder(tmp_path)
    with pytest.warns(UnreadableImagesWarning, match=r"skipped 3 unreadable image\(s\) of 19") as caught:
        dataset = image_folder(root, "train", 16)
    message = str(caught[0].message)
    assert all(name in message for name in ("zero.png", "garbage.jpg", "truncated.png"))
    by_name = {path.name: index for index, (path, _) in enumerate(dataset.files)}
    assert len(dataset) == 16 and {p.name for p in dataset.skipped} == {"zero.png", "garbage.jpg", "truncated.png"}
    gray, rgba, deep, tiny = (dataset[by_name[n]][0] for n in ("gray.png", "rgba.png", "deep16.png", "tiny.png"))
    assert gray.shape == (3, 16, 16) and bool((gray == 200).all())
    assert rgba[0].eq(255).all() and rgba[1:].eq(0).all()  # alpha dropped, colour kept
    assert bool((deep == 128).all())  # 16-bit scaled to 8-bit, not clipped to 255
    assert tiny.shape == (3, 16, 16) and bool((tiny == 50).all())  # upsampled to the image size


def test_folder_with_no_readable_image_fails_before_training(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="no readable image"), pytest.warns(UnreadableImagesWarning):
        image_folder(data, "train", 16)
    result = invoke("pretrain", "--task", "rotation", "--data", data, "--out", tmp_path / "R")
    assert result.exit_code == 2 and "no readable image" in result.output
    assert not (tmp_path / "R").exists()


def test_cli_reports_skipped_files_and_trains_on_the_rest(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = bad_folder(tmp_path / "data")
    result = invoke("pretrain", "--task", "rotation", "--data", root, "--image-size", "16", "--steps", "2",
                    "--batch-size", "4", "--out", tmp_path / "R", "--no-probe")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: skipped 3 unreadable image(s) of 19" in result.output and "truncated.png" in result.output


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [("--steps", "0", "--steps"), ("--batch-size", "x", "--batch-size"), ("--optimizer", "adam", "--optimizer"),
     ("--device", "tpu", "--device"), ("--warmup", "2", "--warmup")],
)  # fmt: skip
def test_invalid_option_values_exit_2_naming_the_option(invoke, option: str, value: str, name: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", "--task", "rotation", option, value)
    assert result.exit_code == 2 and name in result.output
