"""Config files are checked exactly as the command line is: one declaration per field, one error per bad value.

Every value below was accepted from a config file (or the command line) before, and either trained with it,
deleted checkpoints, crashed late with a traceback or divided by zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ssl_engine.config import FIELD_RULES, RESUMABLE_CHANGES, ConfigError, PretrainConfig, TaskSpec
from ssl_engine.testing import REFERENCE_TASK as REFERENCE
from tests.conftest import SettingsTask

SETTINGS = SettingsTask.name
pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's tasks: the core's behaviour, no plugin needed

GOOD = {"steps": 2, "batch_size": 8, "image_size": 32, "probe": False, "workers": 0}

BAD_FIELDS = [
    ("keep_checkpoints", -1),
    ("keep_checkpoints", 0),
    ("batch_size", 0),
    ("batch_size", -3),
    ("checkpoint_every", 0),
    ("log_every", 0),
    ("steps", 0),
    ("steps", -5),
    ("epochs", -1.0),
    ("epochs", 0),
    ("warmup_fraction", 1.5),
    ("workers", -1),
    ("weight_decay", -0.1),
    ("device", "tpu"),
    ("optimizer", "adam"),
    ("lr", math.nan),
    ("lr", math.inf),
    ("lr", 0.0),
    ("image_size", 100000),
    ("backbone", "x" * 100_000),
    ("data", "y" * 100_000),
    ("seed", -1),
    ("steps", "10"),
    ("probe", 1),
]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def write_config(path: Path, fields: dict[str, object], task: str = f"[tasks.{REFERENCE}]\n") -> Path:
    lines = [f"{key} = {toml_value(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n\n" + task)
    return path


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={str(v)[:12]}" for f, v in BAD_FIELDS])
def test_a_bad_value_in_a_config_file_is_refused_naming_the_file_and_field(
    invoke, tmp_path: Path, field: str, value: object
) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path / "exp.toml", {**GOOD, field: value})
    result = invoke("pretrain", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert str(config) in message and repr(field) in message, message
    assert "Traceback" not in message and len(message) < 600, message
    assert not (tmp_path / "run").exists()  # nothing created, nothing trained


@pytest.mark.parametrize("weight", ["-1.0", "0", "nan", "inf", '"heavy"', "true"])
def test_a_bad_task_weight_in_a_config_file_is_refused(invoke, tmp_path: Path, weight: str) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path / "exp.toml", GOOD, f"[tasks.{REFERENCE}]\nweight = {weight}\n")
    result = invoke("pretrain", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert str(config) in result.stderr and f"weight of task '{REFERENCE}'" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_task_section_that_is_not_a_table_and_huge_setting_strings_are_refused(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "exp.toml"
    config.write_text(f"steps = 2\ntasks = {{ {REFERENCE} = 3 }}\n")
    result = invoke("pretrain", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2 and f"[tasks.{REFERENCE}] should be a table" in result.stderr, result.stderr
    config.write_text(f'steps = 2\n[tasks.{SETTINGS}.settings]\nsymmetric = "{"z" * 10_000}"\n')
    result = invoke("pretrain", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2 and f"{SETTINGS}.symmetric" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--warmup", "nan"], "--warmup"),
        (["--task", f"{SETTINGS}=nan"], "--task"),
        (["--task", f"{SETTINGS}=-1"], "--task"),
        (["--task", f"{SETTINGS}=0"], "--task"),
        (["--task", f"{SETTINGS}=inf"], "--task"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints"),
        (["--batch-size", "1"], "--batch-size"),
    ],
)
def test_bad_command_line_values_are_refused_at_parse_time(invoke, tmp_path: Path, args: list[str], named: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", "--task", REFERENCE, *args, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_evaluate_and_bench_refuse_empty_or_out_of_range_options(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke("bench", "--tasks", ",", "--out", tmp_path / "bench")
    assert result.exit_code == 2 and "--tasks" in result.stderr, result.stderr
    result = invoke("bench", "--tasks", REFERENCE, "--protocols", " , ", "--out", tmp_path / "bench")
    assert result.exit_code == 2 and "--protocols" in result.stderr, result.stderr
    assert not (tmp_path / "bench").exists()


def test_every_field_is_declared_once_and_drives_both_the_file_and_the_command_line() -> None:
    from ssl_engine.cli import pretrain

    options = {parameter.name for parameter in pretrain.params}
    assert set(FIELD_RULES) <= options  # each field is a command-line option, generated from its rule
    assert {"steps", "epochs", "log_every", "checkpoint_every", "keep_checkpoints", "device"} <= RESUMABLE_CHANGES
    assert "lr" not in RESUMABLE_CHANGES and "tasks" not in RESUMABLE_CHANGES
    with pytest.raises(ConfigError, match="'keep_checkpoints'"):
        PretrainConfig([TaskSpec("rotation")], keep_checkpoints=-1)
    with pytest.raises(ConfigError, match="weight of task 'rotation'"):
        TaskSpec("rotation", math.nan)
    with pytest.raises(ConfigError, match="exp.toml: field 'log_every'"):
        PretrainConfig.from_dict({"log_every": 0, "tasks": {"rotation": {}}}, "exp.toml")
