"""Bad input images in a folder data set: decoded where possible, otherwise skipped, counted and named."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_engine.data.folder import UnreadableImagesWarning, image_folder
from ssl_engine.data.options import DataError
from ssl_engine.testing import REFERENCE_TASK
from tests.conftest import write_images, write_two_classes

pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's task: the core's behaviour, no plugin needed


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
        dataset = image_folder(root, "train", 16, verify=True)
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
        image_folder(data, "train", 16, verify=True)
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--data", data, "--out", tmp_path / "R")
    assert result.exit_code == 2 and "no readable image" in result.output
    assert not (tmp_path / "R").exists()


@pytest.mark.slow
def test_cli_reports_skipped_files_and_trains_on_the_rest(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = bad_folder(tmp_path / "data")
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--data", root, "--image-size", "16", "--steps", "2",
                    "--batch-size", "4", "--out", tmp_path / "R", "--no-probe", "--verify-images")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: skipped 3 unreadable image(s) of 19" in result.output and "truncated.png" in result.output


def write_bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A valid PNG of about 60 bytes whose header declares ``width x height`` RGB pixels (10^10 by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def write_hostile_entries(folder: Path) -> set[str]:
    """A decompression bomb, a directory and a symlink loop, all named like images; returns their names."""
    write_bomb_png(folder / "bomb.png")
    (folder / "cat.png").mkdir()
    (folder / "loop.png").symlink_to("loop.png")
    return {"bomb.png", "cat.png", "loop.png"}


def test_decompression_bombs_directories_and_link_loops_are_skipped_counted_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path, 6, size=20)
    hostile = write_hostile_entries(tmp_path)
    # Between the pixel limit and twice it PIL only warns, then decodes it all: refused as well.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")  # 1600 pixels: a warning only
    hostile.add("big.png")
    with pytest.warns(UnreadableImagesWarning, match=r"skipped 4 unreadable image\(s\) of 10") as caught:
        dataset = image_folder(tmp_path, "train", 16, verify=True)
    assert all(name in str(caught[0].message) for name in hostile)
    assert {path.name for path in dataset.skipped} == hostile and len(dataset) == 6
    assert dataset[0][0].shape == (3, 16, 16)


@pytest.mark.slow
def test_pretrain_and_evaluate_skip_hostile_entries(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = write_two_classes(tmp_path / "data", per_class=12, size=20)
    hostile = write_hostile_entries(root / "c0") | write_hostile_entries(root / "c1")
    run = tmp_path / "R"
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--data", root, "--image-size", "16", "--steps", "2",
                    "--batch-size", "4", "--no-probe", "--workers", "0", "--out", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: skipped" in result.output and all(name in result.output for name in hostile)
    evaluated = invoke("evaluate", run, "--protocol", "knn", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "warning: skipped" in evaluated.output


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [("--steps", "0", "--steps"), ("--batch-size", "x", "--batch-size"), ("--optimizer", "adam", "--optimizer"),
     ("--device", "tpu", "--device"), ("--warmup", "2", "--warmup")],
)  # fmt: skip
def test_invalid_option_values_exit_2_naming_the_option(invoke, option: str, value: str, name: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", "--task", REFERENCE_TASK, option, value)
    assert result.exit_code == 2 and name in result.output
