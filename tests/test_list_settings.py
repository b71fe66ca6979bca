"""List-valued task settings (``--set TASK.sigmas=0,1,2,4``, ``sigmas = [0, 1, 2, 4]`` in a config file) and the
task's resolved settings as ``self.hparams`` (``self.config`` kept as a deprecated alias)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from ssl_engine.settings import SettingError, TaskSetting, resolve_settings
from ssl_engine.testing import KIT_DATA, ReferenceTask, check_pretext_task, cli_plugins, run_cli, task_instance

SIGMAS = TaskSetting("sigmas", list, [0.0, 1.0, 2.0], "blur levels", minimum=0, maximum=8, item_type=float)


class BlurLevels(ReferenceTask):
    """The kit's reference task with a list setting, which it reads."""

    name = "kit_blur_levels"
    summary = "the kit's reference task, with a list of blur levels"
    settings = (SIGMAS,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        if len(set(self.hparams["sigmas"])) != len(self.hparams["sigmas"]):  # a rule across items
            raise SettingError(f"task {self.name!r}: sigmas repeat: {self.hparams['sigmas']}")


def test_a_list_parses_from_a_command_line_string_and_from_a_config_array() -> None:
    assert resolve_settings("t", (SIGMAS,), {"sigmas": "0, 1.5,4"}) == {"sigmas": [0.0, 1.5, 4.0]}
    assert resolve_settings("t", (SIGMAS,), {"sigmas": [0, 2]}) == {"sigmas": [0.0, 2.0]}
    assert resolve_settings("t", (SIGMAS,), {}) == {"sigmas": [0.0, 1.0, 2.0]}
    assert SIGMAS.type_name == "list[float]"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "at least 1 item"),
        ("1,x", "setting t.sigmas[1] expects float, got 'x'"),
        ("1,9", "setting t.sigmas[1] must be <= 8"),
        ([1, True], "setting t.sigmas[1] expects float"),
        (3.0, "expects a list of float"),
        ("1,nan", "finite"),
    ],
)
def test_bad_lists_name_the_item(value: object, message: str) -> None:
    with pytest.raises(SettingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_settings("t", (SIGMAS,), {"sigmas": value})


def test_a_list_setting_needs_an_item_type() -> None:
    with pytest.raises(TypeError, match="item_type"):
        TaskSetting("sigmas", list, [1], "no item type")


def test_hparams_holds_the_settings_and_config_is_a_deprecated_alias() -> None:
    task = task_instance(BlurLevels, 32, sigmas="1,2")
    assert task.hparams["sigmas"] == [1.0, 2.0]
    with pytest.warns(DeprecationWarning, match="self.hparams"):
        assert task.config["sigmas"] == [1.0, 2.0]


def test_a_task_with_a_list_setting_keeps_the_contract() -> None:
    check_pretext_task(BlurLevels, settings={"sigmas": "0,3"})


def test_a_list_set_on_the_command_line_is_saved_and_resumes_unchanged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ("--data", KIT_DATA, "--batch-size", "8", "--no-probe", "--workers", "0", "--out", str(run))
    with cli_plugins(BlurLevels):
        first = run_cli("pretrain", "--task", BlurLevels.name, "--set", f"{BlurLevels.name}.sigmas=0,2,4",
                        "--steps", "1", *common)  # fmt: skip
        assert first.exit_code == 0, first.output
        saved = tomllib.loads((run / "config.toml").read_text())
        assert saved["tasks"][BlurLevels.name]["settings"]["sigmas"] == [0.0, 2.0, 4.0]
        resumed = run_cli("pretrain", "--resume", "--steps", "2", "--out", str(run))
        assert resumed.exit_code == 0, resumed.output
        repeated = run_cli("pretrain", "--task", BlurLevels.name, "--set", f"{BlurLevels.name}.sigmas=1,1",
                           "--steps", "1", *common[:-1], str(tmp_path / "other"))  # fmt: skip
    assert repeated.exit_code == 2 and "sigmas repeat" in repeated.output
