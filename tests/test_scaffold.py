"""``sslx new-plugin``: the scaffolded package installs, shows up in ``sslx plugins``, pretrains, and its own tests
(the conformance kit among them) pass; bad names and existing folders are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from ssl_engine.scaffold import PluginNames


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    """pip of this interpreter's environment, offline (setuptools is already installed, nothing is fetched)."""
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``sslx new-plugin demo`` run as a user runs it, then ``pip install -e`` of the result; uninstalled after."""
    parent = tmp_path_factory.mktemp("plugins")
    made = subprocess.run(
        [sys.executable, "-m", "ssl_engine.cli", "new-plugin", "demo", "--dir", str(parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    package = parent / "sslx-demo"
    assert f"pip install -e '{package}[test]'" in made.stdout
    try:
        installed = pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(package))
        assert installed.returncode == 0, installed.stderr
        yield package
    finally:
        # The venv is shared: leave it as it was even when a test or the install failed half-way.
        pip("uninstall", "-y", "sslx-demo")


@pytest.mark.slow
def test_the_package_has_the_plugin_layout(demo: Path) -> None:
    files = sorted(str(path.relative_to(demo)) for path in demo.rglob("*") if path.is_file())
    expected = [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "sslx_demo/__init__.py",
        "sslx_demo/plugin.py",
        "sslx_demo/task.py",
        "tests/test_demo.py",
    ]
    assert [name for name in files if "egg-info" not in name and "__pycache__" not in name] == expected
    project = tomllib.loads((demo / "pyproject.toml").read_text())
    assert project["project"]["name"] == "sslx-demo"
    assert any(requirement.startswith("sslx") for requirement in project["project"]["dependencies"])
    assert project["project"]["entry-points"]["ssl_engine"] == {"demo": "sslx_demo.plugin"}


@pytest.mark.slow
def test_the_installed_plugin_is_listed(demo: Path, sslx: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = sslx("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    [plugin] = [plugin for plugin in listing["plugins"] if plugin["name"] == "demo"]
    assert plugin["distribution"] == "sslx-demo" and plugin["registered"] == {"task": ["demo"]}
    assert not [problem for problem in listing["problems"] if problem["plugin"] == "demo"]


@pytest.mark.slow
def test_the_installed_task_pretrains(
    demo: Path, tmp_path: Path, sslx: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    run = tmp_path / "run"
    result = sslx("pretrain", "--task", "demo", "--steps", "5", "--batch-size", "16", "--workers", "0", "--no-probe",
                  "--out", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "finished 5 steps" in result.stdout
    assert list(run.glob("checkpoint-*.safetensors"))


@pytest.mark.slow
def test_the_scaffolds_own_tests_pass(demo: Path) -> None:
    # Its own folder as the working directory: its pyproject.toml is the pytest configuration there.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(demo)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=demo,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


@pytest.mark.slow
def test_the_scaffold_passes_the_linters(demo: Path) -> None:
    pytest.importorskip("ruff")
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "."], capture_output=True, text=True, timeout=120, cwd=demo
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_hyphens_become_underscores_in_the_package(invoke: Callable[..., Result], tmp_path: Path) -> None:
    result = invoke("new-plugin", "upside-down", "--dir", tmp_path)
    assert result.exit_code == 0, result.output
    root = tmp_path / "sslx-upside-down"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["ssl_engine"] == {"upside-down": "sslx_upside_down.plugin"}
    task = (root / "sslx_upside_down" / "task.py").read_text()
    assert "class UpsideDownTask(api.PretextTask):" in task and 'name = "upside-down"' in task
    for path in root.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
    assert (root / "tests" / "test_upside_down.py").is_file()


def test_next_steps_are_printed(invoke: Callable[..., Result], tmp_path: Path) -> None:
    result = invoke("new-plugin", "flip", "--dir", tmp_path / "new" / "folder")
    assert result.exit_code == 0, result.output
    for step in ("pip install -e", "sslx plugins", "sslx pretrain --task flip --steps 5"):
        assert step in result.stdout


def test_an_existing_folder_is_refused(invoke: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "sslx-flip").mkdir()
    (tmp_path / "sslx-flip" / "mine.py").write_text("keep me\n")
    result = invoke("new-plugin", "flip", "--dir", tmp_path)
    assert result.exit_code == 2
    assert f"{tmp_path / 'sslx-flip'} already exists" in result.stderr
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["mine.py", "sslx-flip"]  # nothing else written


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Flip", "not a task name"),
        ("9lives", "not a task name"),
        ("my.task", "not a task name"),
        ("flip-", "not a task name"),
        ("sslx-flip", "without the 'sslx-' prefix"),
    ],
)
def test_bad_names_are_refused(invoke: Callable[..., Result], tmp_path: Path, name: str, message: str) -> None:
    result = invoke("new-plugin", name, "--dir", tmp_path)
    assert result.exit_code == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_names_are_derived_from_the_task_name() -> None:
    names = PluginNames.from_name("color_jitter-2")
    assert (names.distribution, names.package, names.class_name) == (
        "sslx-color_jitter-2",
        "sslx_color_jitter_2",
        "ColorJitter2Task",
    )


def test_help_shows_an_example(invoke: Callable[..., Result]) -> None:
    result = invoke("new-plugin", "--help")
    assert result.exit_code == 0
    assert "sslx new-plugin upside-down --dir ~/code" in result.stdout
    assert 'pip install -e "$HOME/code/sslx-upside-down[test]"' in result.stdout


REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_core_installs_from_a_git_url_as_the_scaffold_readme_says(demo: Path, tmp_path: Path) -> None:
    """The README's git-URL line, pointed at this repository (``git+file://``, offline): pip clones it and builds
    the core's wheel with its package, typing marker, templates and entry point."""
    if not (REPOSITORY / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (demo / "README.md").read_text()
    [line] = [line for line in readme.splitlines() if "git+https://" in line]
    requirement = line.split('"')[1].replace("https://github.com/OWNER/sslx.git", REPOSITORY.as_uri())
    assert requirement == f"git+{REPOSITORY.as_uri()}"
    built = pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path), requirement)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("sslx-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        assert "core = ssl_engine.builtin" in archive.read(entry_points).decode()
    assert {"ssl_engine/api.py", "ssl_engine/py.typed", "ssl_engine/templates/plugin/pyproject.toml.tmpl"} <= names
    assert 'pip install -e ".[test]"' in readme
