"""Seeing what tasks do and how runs go: sslx show, sslx plot, TensorBoard files, help texts."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from PIL import Image

from ssl_engine.cli import main
from ssl_engine.plugins import get_host
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli

TASKS = get_host().registry.names("task")
# Tasks that refuse the default convnet are drawn on this backbone (MAE needs a ViT; two blocks are enough).
BACKBONES = {"mae": "timm:vit_tiny_patch16_224?depth=2"}


@pytest.mark.parametrize("task", TASKS)
def test_show_writes_a_picture_for_every_installed_task(invoke, tmp_path: Path, task: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / f"{task}.png"
    backbone = ("--backbone", BACKBONES[task]) if task in BACKBONES else ()
    result = invoke("show", "--task", task, "--count", "3", "--out", out, *backbone)
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        views = get_host().registry.get("task", task).obj.views
        assert picture.width >= (1 + views) * 64 and picture.height >= 3 * 64  # a row per example, a cell per view
        assert len(set(picture.getdata())) > 50  # real images, not a blank canvas


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step run of the kit's reference task (read with ``reference_cli``)."""
    with cli_plugins():
        return pretrain_cli(tmp_path_factory.mktemp("runs"), REFERENCE_TASK, "--data", KIT_DATA, "--steps", 4,
                            "--log-every", 1)  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_show_after_a_run_draws_predictions(invoke, finished_run: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke("show", finished_run, "--count", "2")
    assert result.exit_code == 0, result.output
    with Image.open(finished_run / f"show-{REFERENCE_TASK}.png") as picture:
        assert picture.format == "PNG"


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_show_set_takes_only_the_settings_of_the_fresh_task_drawn(invoke, finished_run: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = invoke("show", "--task", REFERENCE_TASK, "--set", "jigsaw.permutations=30", "--out", tmp_path / "a.png")
    assert other.exit_code == 2 and f"--set jigsaw.…: the task drawn is {REFERENCE_TASK!r}" in other.output
    of_a_run = invoke("show", finished_run, "--set", f"{REFERENCE_TASK}.x=1")
    assert of_a_run.exit_code == 2 and "a RUN_DIR is drawn with the settings it trained with" in of_a_run.output
    unknown = invoke("show", "--task", REFERENCE_TASK, "--set", f"{REFERENCE_TASK}.colour=1", "--out", tmp_path / "b")
    assert unknown.exit_code == 2 and "colour" in unknown.output
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_plot_draws_curves_of_several_runs(invoke, finished_run: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "curves.png"
    result = invoke("plot", finished_run, finished_run, "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 1000
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("plot", empty).exit_code == 2


@pytest.mark.slow
def test_tensorboard_event_files_parse_with_tensorboards_reader(finished_run: Path) -> None:
    accumulator_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = accumulator_module.EventAccumulator(str(finished_run / "tensorboard"))
    accumulator.Reload()
    assert {"loss", f"{REFERENCE_TASK}/accuracy", "lr"} <= set(accumulator.Tags()["scalars"])
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2, 3, 4]


def walk(command: click.Command, path: str = "sslx") -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += walk(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_help() -> None:
    for path, command in walk(main):
        assert command.help, f"{path} has no help text"
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                assert parameter.help, f"{path} {parameter.opts[0]} has no help text"
    for path, command in walk(main)[1:]:
        assert "Example" in (command.help or ""), f"{path} help shows no example"


def test_version(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke("--version")
    assert result.exit_code == 0 and "sslx, version 0.1.0" in result.output
