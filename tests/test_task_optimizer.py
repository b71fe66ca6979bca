"""A task's ``default_optimizer``: the optimiser its recipe trains with when ``--optimizer`` is not given."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.task import TaskDeclarationError
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, ReferenceTask, cli_plugins


class LarsTask(ReferenceTask):
    """The kit's reference task, trained with LARS unless told otherwise."""

    name = "kit_reference_lars"
    summary = "the kit's reference task, with LARS as its optimiser"
    default_optimizer = "lars"


class AdamWTask(ReferenceTask):
    """The kit's reference task, trained with AdamW unless told otherwise."""

    name = "kit_reference_adamw"
    summary = "the kit's reference task, with AdamW as its optimiser"
    default_optimizer = "adamw"


@pytest.fixture(autouse=True)
def tasks_with_optimizers() -> object:
    with cli_plugins(LarsTask, AdamWTask):
        yield


def pretrain(invoke: Callable[..., Result], out: Path, *words: str) -> Result:
    return invoke("pretrain", *words, "--data", KIT_DATA, "--steps", "2", "--batch-size", "8", "--no-probe",
                  "--out", out)  # fmt: skip


def trained_with(run: Path) -> str:
    """The optimiser kept in the run's config, checked against the kind of the checkpoint's param groups (LARS's
    carry ``eta``, AdamW's ``betas``, SGD's neither)."""
    config = tomllib.loads((run / "config.toml").read_text())
    groups = json.loads(json.loads(read_checkpoint(checkpoint_paths(run)[-1]).metadata["optim"])["main"])
    first = groups["param_groups"][0]
    kind = "lars" if "eta" in first else "adamw" if "betas" in first else "sgd"
    assert kind == config["optimizer"], (kind, config["optimizer"])
    return kind


def test_a_tasks_default_optimizer_is_used_and_kept_in_the_config(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    result = pretrain(invoke, tmp_path / "lars", "--task", LarsTask.name)
    assert result.exit_code == 0, result.output
    assert trained_with(tmp_path / "lars") == "lars"
    plain = pretrain(invoke, tmp_path / "plain", "--task", REFERENCE_TASK)
    assert plain.exit_code == 0, plain.output
    assert trained_with(tmp_path / "plain") == "sgd"  # a task naming none: the engine's SGD


def test_the_command_line_wins_over_the_tasks_default(invoke: Callable[..., Result], tmp_path: Path) -> None:
    result = pretrain(invoke, tmp_path / "run", "--task", LarsTask.name, "--optimizer", "sgd")
    assert result.exit_code == 0, result.output
    assert trained_with(tmp_path / "run") == "sgd"


def test_a_mix_uses_the_one_default_named_and_sgd_when_they_disagree(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    agreeing = pretrain(invoke, tmp_path / "agree", "--task", LarsTask.name, "--task", f"{REFERENCE_TASK}=0.5")
    assert agreeing.exit_code == 0, agreeing.output
    assert trained_with(tmp_path / "agree") == "lars"
    disagreeing = pretrain(invoke, tmp_path / "disagree", "--task", LarsTask.name, "--task", AdamWTask.name)
    assert disagreeing.exit_code == 0, disagreeing.output
    assert (
        "warning: the tasks name different default optimizers (kit_reference_lars: lars, kit_reference_adamw: "
        "adamw); training with sgd: pass --optimizer to choose" in disagreeing.output
    )
    assert trained_with(tmp_path / "disagree") == "sgd"


def test_a_resume_keeps_the_optimizer_the_run_started_with(invoke: Callable[..., Result], tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert pretrain(invoke, run, "--task", LarsTask.name).exit_code == 0
    longer = invoke("pretrain", "--out", run, "--resume", "--steps", "3")
    assert longer.exit_code == 0, longer.output
    assert trained_with(run) == "lars" and read_checkpoint(checkpoint_paths(run)[-1]).step == 3
    changed = invoke("pretrain", "--out", run, "--resume", "--steps", "4", "--optimizer", "adamw")
    assert changed.exit_code == 2 and "optimizer: 'lars' -> 'adamw'" in changed.output


def test_an_unknown_default_optimizer_is_a_declaration_error() -> None:
    class Misdeclared(ReferenceTask):
        name = "misdeclared"
        default_optimizer = "adam"

    with pytest.raises(TaskDeclarationError, match="`default_optimizer` must be None or one of sgd, adamw, lars"):
        Misdeclared.check_declaration()


def test_sslx_plugins_says_which_optimizer_a_task_trains_with(invoke: Callable[..., Result]) -> None:
    listed = invoke("plugins", LarsTask.name)
    assert listed.exit_code == 0 and "trains with lars unless --optimizer says otherwise" in listed.output
    assert json.loads(invoke("plugins", LarsTask.name, "--json").stdout)["default_optimizer"] == "lars"
    assert json.loads(invoke("plugins", REFERENCE_TASK, "--json").stdout)["default_optimizer"] is None
