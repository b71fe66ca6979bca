"""Experiments as files: a config file and the equivalent command line give the same run."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.config import ConfigError, PretrainConfig
from ssl_engine.testing import KIT_DATA
from ssl_engine.testing import REFERENCE_TASK as REFERENCE
from tests.conftest import SettingsTask

SETTINGS = SettingsTask.name
EXPERIMENT = f"""
backbone = "smallconv"
data = "{KIT_DATA}"
image_size = 32
batch_size = 8
steps = 2
optimizer = "adamw"
probe = false

[tasks.{REFERENCE}]
head = "mlp"

[tasks.{SETTINGS}]
weight = 0.5
[tasks.{SETTINGS}.settings]
size = 10
"""
pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's tasks: the core's behaviour, no plugin needed


def resolved(run: Path) -> dict[str, object]:
    return tomllib.loads((run / "config.toml").read_text())


@pytest.mark.slow
def test_config_file_equals_the_command_line_and_options_override_it(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    from_file = invoke("pretrain", "--config", tmp_path / "exp.toml", "--out", tmp_path / "A")
    assert from_file.exit_code == 0, from_file.output
    from_options = invoke(
        "pretrain", "--task", REFERENCE, "--task", f"{SETTINGS}=0.5", "--head", f"{REFERENCE}=mlp",
        "--set", f"{SETTINGS}.size=10", "--data", KIT_DATA, "--image-size", "32", "--batch-size", "8", "--steps", "2",
        "--optimizer", "adamw", "--no-probe", "--out", tmp_path / "B",
    )  # fmt: skip
    assert from_options.exit_code == 0, from_options.output
    assert resolved(tmp_path / "A") == resolved(tmp_path / "B")
    tasks = resolved(tmp_path / "A")["tasks"]
    assert list(tasks) == [REFERENCE, SETTINGS]  # type: ignore[call-overload]
    assert tasks[REFERENCE]["head"] == "mlp" and tasks[SETTINGS]["weight"] == 0.5  # type: ignore[index]
    assert tasks[SETTINGS]["settings"] == {"size": 10, "symmetric": True}  # defaults pinned  # type: ignore[index]
    overridden = invoke("pretrain", "--config", tmp_path / "exp.toml", "--lr", "0.01", "--set",
                        f"{SETTINGS}.size=12", "--out", tmp_path / "C")  # fmt: skip
    assert overridden.exit_code == 0, overridden.output
    config = resolved(tmp_path / "C")
    assert config["lr"] == 0.01 and config["tasks"][SETTINGS]["settings"]["size"] == 12  # type: ignore[index]
    assert config["optimizer"] == "adamw"  # the rest still from the file


@pytest.mark.slow
def test_a_runs_config_reproduces_the_run(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = invoke("pretrain", "--task", REFERENCE, "--data", KIT_DATA, "--steps", "3", "--batch-size", "8",
                   "--no-probe", "--out", tmp_path / "A")  # fmt: skip
    assert first.exit_code == 0, first.output
    again = invoke("pretrain", "--config", tmp_path / "A" / "config.toml", "--out", tmp_path / "B")
    assert again.exit_code == 0, again.output
    a, b = (read_checkpoint(checkpoint_paths(tmp_path / run)[-1]).module_state("model") for run in "AB")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_needs_only_the_run_directory_and_refuses_other_changes(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "R"
    assert invoke("pretrain", "--task", REFERENCE, "--data", KIT_DATA, "--steps", "2", "--batch-size", "8",
                  "--no-probe", "--out", run).exit_code == 0  # fmt: skip
    longer = invoke("pretrain", "--out", run, "--resume", "--steps", "3", "--log-every", "1")
    assert longer.exit_code == 0, longer.output
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == 3
    changed = invoke("pretrain", "--out", run, "--resume", "--steps", "4", "--batch-size", "16", "--seed", "3")
    assert changed.exit_code == 2
    assert "batch_size: 8 -> 16" in changed.output and "seed: 0 -> 3" in changed.output and "--force" in changed.output
    forced = invoke("pretrain", "--out", run, "--resume", "--steps", "4", "--seed", "3", "--force")
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz = 3\n", "unknown field 'stepz'; valid fields:"),
        ("steps = 'many'\n", "field 'steps' should be int"),
        (f"[tasks.{REFERENCE}]\ncolour = 1\n", f"[tasks.{REFERENCE}] has unknown key 'colour'"),
        ("steps = \n", "cannot read config file"),
    ],
)
def test_bad_config_files_name_file_and_field(invoke, tmp_path: Path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        PretrainConfig.load(path)
    result = invoke("pretrain", "--config", path, "--task", REFERENCE, "--out", tmp_path / "R")
    assert result.exit_code == 2 and message in result.output and str(path) in result.output


def test_missing_config_file_and_no_task(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = invoke("pretrain", "--config", tmp_path / "nope.toml")
    assert missing.exit_code == 2 and "nope.toml does not exist" in missing.output
    no_task = invoke("pretrain", "--steps", "1")
    assert no_task.exit_code == 2 and "no task given" in no_task.output
