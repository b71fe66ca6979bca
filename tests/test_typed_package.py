"""``ssl_engine`` is a typed package (PEP 561): mypy on a user's file reads its annotations.

Without ``py.typed`` mypy skips the installed package as untyped and ``load_backbone`` returns ``Any``; with a
setuptools editable install that goes through an import hook, mypy does not find the package at all. Both are
checked as a user meets them: mypy, run from the environment's Python on a file outside the repository, and
the wheel a ``pip install`` from a checkout or a git URL builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs mypy or builds a wheel in a fresh process

REPOSITORY = Path(__file__).resolve().parents[1]

USER_FILE = """\
from ssl_engine import load_backbone, load_representation

backbone = load_backbone("runs/jigsaw")
reveal_type(backbone)
reveal_type(load_representation("runs/jigsaw"))
"""


def test_mypy_on_a_users_file_sees_load_backbone_typed(tmp_path: Path) -> None:
    (tmp_path / "user.py").write_text(USER_FILE)
    env = {key: value for key, value in os.environ.items() if key not in ("MYPYPATH", "PYTHONPATH")}
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "user.py"],
        cwd=tmp_path,  # no project configuration: the user's view of the installed package
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    report = checked.stdout + checked.stderr
    assert "import-untyped" not in report and "import-not-found" not in report, report
    revealed = [line.split("Revealed type is ", 1)[1] for line in report.splitlines() if "Revealed type is" in line]
    assert len(revealed) == 2, report
    assert revealed[0].endswith('.Backbone"'), report
    assert revealed[1].endswith('.Representation"'), report
    assert checked.returncode == 0, report


def test_the_wheel_ships_the_py_typed_marker(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")  # the build backend, used from this environment (no network)
    source = tmp_path / "source"  # a copy, so the build leaves the checkout alone
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    shutil.copytree(REPOSITORY / "ssl_engine", source / "ssl_engine", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("sslx-*.whl")
    assert "ssl_engine/py.typed" in zipfile.ZipFile(wheel).namelist()
