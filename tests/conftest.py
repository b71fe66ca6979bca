"""Shared fixtures: the CLI as a user runs it, and tiny data on disk."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from ssl_engine.cli import main

# Two cores, several test processes at times: keep torch from oversubscribing.
torch.set_num_threads(2)


@pytest.fixture
def invoke() -> Callable[..., Result]:
    """Run ``sslx ARGS`` in-process with click's runner (stderr kept apart from stdout)."""

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


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
