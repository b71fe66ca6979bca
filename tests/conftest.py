"""Shared fixtures: the CLI as a user runs it, the kit's reference task in place of the installed plugins, and tiny
data on disk."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from ssl_engine.cli import main
from ssl_engine.settings import TaskSetting
from ssl_engine.testing import ReferenceTask, cli_plugins


def pytest_configure(config: pytest.Config) -> None:
    """The suite's own user cache (the closing probe's random-init results), so running the tests never writes into
    the real ``~/.cache/sslx`` of whoever runs them; processes the tests start inherit it."""
    if "SSLX_CACHE_DIR" not in os.environ:
        os.environ["SSLX_CACHE_DIR"] = tempfile.mkdtemp(prefix="sslx-test-cache-")


# Two cores, several test processes at times: keep torch from oversubscribing.
torch.set_num_threads(2)


@pytest.fixture
def invoke() -> Callable[..., Result]:
    """Run ``sslx ARGS`` in-process with click's runner (stderr kept apart from stdout)."""

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


class LargeImagesTask(ReferenceTask):
    """The kit's reference task, refusing images under 24 px."""

    name = "kit_reference_24px"
    summary = "the kit's reference task, on images of 24 px or more"
    min_image_size = 24


class ColourTask(ReferenceTask):
    """The kit's reference task, refusing grayscale data."""

    name = "kit_reference_colour"
    summary = "the kit's reference task, on colour images only"
    needs_color = True


class SettingsTask(ReferenceTask):
    """The kit's reference task with a setting of two types (it reads neither)."""

    name = "kit_reference_settings"
    summary = "the kit's reference task, with settings"
    settings = (
        TaskSetting("size", int, 100, "a number", minimum=2, maximum=1000),
        TaskSetting("symmetric", bool, True, "a flag"),
    )


@pytest.fixture
def reference_cli() -> Iterator[None]:
    """``invoke`` sees the core and the kit's pieces only, not the installed plugins: ``--task kit_reference``
    (:data:`ssl_engine.testing.REFERENCE_TASK`, or :class:`LargeImagesTask`, :class:`ColourTask`,
    :class:`SettingsTask`), ``--data
    kit-shapes`` (32 images a split), ``--backbone kit-smallconv``, so a test of the core's behaviour needs no task
    plugin."""
    with cli_plugins(LargeImagesTask, ColourTask, SettingsTask):
        yield


@pytest.fixture
def sslx() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``sslx ARGS`` in a fresh process, as from a shell."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ssl_engine.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )

    return run


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    """A tar file (a WebDataset shard) at ``path`` holding ``members``, name -> bytes, in the given order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_images(folder: Path, count: int, size: int = 20, seed: int = 0) -> list[Path]:
    """``count`` random RGB PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"img{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_two_classes(root: Path, per_class: int, size: int) -> Path:
    """A labelled folder ``root/c0``, ``root/c1`` of ``per_class`` random ``size`` px PNGs each (seeds 0 and 1)."""
    for label in range(2):
        write_images(root / f"c{label}", per_class, size=size, seed=label)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A labelled folder: 3 classes of 30 small PNGs each."""
    root = tmp_path / "pictures"
    for label, name in enumerate(("ants", "bees", "cats")):
        write_images(root / name, 30, seed=label)
    return root
