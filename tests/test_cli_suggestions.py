"""``sslx`` messages that say what to do: "did you mean", devices, resume changes, task settings, Ctrl-C in an
evaluation, and the closing summary of a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from ssl_engine.cli_common import error_line
from ssl_engine.testing import KIT_DATA, cli_plugins, pretrain_cli, run_cli
from ssl_engine.testing import REFERENCE_TASK as REFERENCE
from tests.conftest import SettingsTask

Invoke = Callable[..., Result]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--task", "kit_referense"), f"unknown task 'kit_referense' (did you mean {REFERENCE!r}?); available: "),
        (("--task", REFERENCE, "--data", "kit-shape"), "unknown data set 'kit-shape' (did you mean 'kit-shapes'?)"),
        (("--task", REFERENCE, "--head", f"{REFERENCE}=mpl"), "unknown head 'mpl' (did you mean 'mlp'?)"),
        (
            ("--task", REFERENCE, "--loss", f"{REFERENCE}=cross_entropi"),
            "unknown loss 'cross_entropi' (did you mean 'cross_entropy'?)",
        ),
        (("--task", REFERENCE, "--backbone", "kit-smalconv"), "(did you mean 'kit-smallconv'?)"),
    ],
)
@pytest.mark.usefixtures("reference_cli")
def test_misspelled_names_get_the_closest_one(
    invoke: Invoke, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = invoke("pretrain", *args, "--steps", "1", "--data-dir", tmp_path, "--out", tmp_path / "R")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "R").exists()


def test_a_name_nothing_resembles_lists_the_valid_ones_only(invoke: Invoke, tmp_path: Path) -> None:
    with cli_plugins():
        result = invoke("pretrain", "--task", "zzzz", "--out", tmp_path / "R")
    assert result.exit_code == 2 and "unknown task 'zzzz'; available: " in result.stderr and "mean" not in result.stderr


def test_a_mistyped_command_gets_the_closest_one(invoke: Invoke) -> None:
    result = invoke("evalute", "runs/x")
    assert result.exit_code == 2 and "no such command 'evalute' (did you mean 'evaluate'?)" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", ["pretrain", "evaluate"])
@pytest.mark.usefixtures("reference_cli")
def test_cuda_without_cuda_suggests_auto_or_cpu(invoke: Invoke, tmp_path: Path, command: str) -> None:
    args = ["--task", REFERENCE, "--out", tmp_path / "R"] if command == "pretrain" else [tmp_path]
    result = invoke(command, *args, "--device", "cuda")
    assert result.exit_code == 2, result.output
    assert "--device cuda: CUDA is not available" in result.stderr and "--device auto" in result.stderr
    assert "--device cpu" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_torchvisions_advice_to_python_callers_is_left_out() -> None:
    message = (
        "data set 'cifar10' not found: looked for /d/cifar10/x and /d/x (the data dir is --data-dir, else "
        "$SSLX_DATA_DIR, else ~/.cache/sslx/data); pass --download to fetch it, or --data-dir to point at a copy "
        "(Dataset not found or corrupted. You can use download=True to download it)"
    )
    assert error_line(message) == message[: message.index(" (Dataset")]


@pytest.mark.usefixtures("reference_cli")
def test_a_missing_data_set_says_how_to_get_it_in_sslx_terms(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("pretrain", "--task", REFERENCE, "--data", "mnist", "--data-dir", tmp_path, "--out", tmp_path / "R")
    assert result.exit_code == 2, result.output
    assert "--download" in result.stderr and "download=True" not in result.stderr


def test_plugins_lists_a_tasks_settings_with_type_default_and_range(invoke: Invoke) -> None:
    with cli_plugins(SettingsTask):
        one = invoke("plugins", SettingsTask.name)
        everything = invoke("plugins", "--settings", "--json")
        alone = invoke("plugins", SettingsTask.name, "--json")
        unknown = invoke("plugins", "kit_reference_setings")
    assert one.exit_code == 0, one.output
    [size] = [line.split() for line in one.stdout.splitlines() if line.strip().startswith("size")]
    assert size[:7] == ["size", "int", "default", "100", ">=", "2", "and"] and "a number" in " ".join(size)
    records = {record["task"]: record for record in json.loads(everything.stdout)["tasks"]}
    assert records[REFERENCE]["settings"] == []
    symmetric = records[SettingsTask.name]["settings"][1]
    assert symmetric["type"] == "bool" and symmetric["default"] is True and symmetric["range"] == "true or false"
    assert symmetric["help"] == "a flag" and symmetric["minimum"] is None and symmetric["choices"] is None
    assert json.loads(alone.stdout) == records[SettingsTask.name]
    assert unknown.exit_code == 2 and f"(did you mean {SettingsTask.name!r}?)" in unknown.stderr


def test_ctrl_c_in_evaluate_exits_130_saying_how_to_run_it_later(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssl_engine.eval import evaluate

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_run", interrupted)
    with cli_plugins():
        result = invoke("evaluate", tmp_path, "--protocol", "knn")
    assert result.exit_code == 130, result.output
    later = f"sslx evaluate {tmp_path} --protocol knn"
    assert result.stderr == f"interrupted: the knn evaluation did not finish; run it later with: {later}\n"


@pytest.mark.slow
def test_a_runs_summary_ctrl_c_in_its_probe_and_resume_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssl_engine.eval import evaluate

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    run = tmp_path / "R"
    common = ("--data", KIT_DATA, "--batch-size", 8, "--out", run, "--checkpoint-every", 2)
    with cli_plugins():
        pretrain_cli(tmp_path, REFERENCE, *common, "--steps", 2, "--no-probe")
        resumed = run_cli("pretrain", "--task", REFERENCE, *common, "--steps", 3, "--resume", "--no-probe")
        changed = run_cli("pretrain", "--task", REFERENCE, *common, "--steps", 4, "--resume", "--lr", 0.1)
        monkeypatch.setattr(evaluate, "probe_against_random", interrupted)
        probed = run_cli("pretrain", "--task", REFERENCE, *common, "--steps", 4, "--resume", "--probe")
    assert resumed.exit_code == 0, resumed.output
    first = resumed.stderr.splitlines()[0]
    assert first.startswith("resuming from step 2 (checkpoint-00000002.safetensors): pretraining kit_reference")
    assert f"run directory: {run}" in resumed.stderr
    for command in ("evaluate", "show", "plot"):
        assert f"sslx {command} {run}" in resumed.stderr
    assert f"sslx export {run} --out " in resumed.stderr
    assert changed.exit_code == 2 and "lr: 0.05 (sgd's default) -> 0.1" in changed.stderr, changed.stderr
    assert probed.exit_code == 130, probed.output
    assert probed.stderr.strip().splitlines()[-1] == (
        f"interrupted: the closing linear probe did not finish (training did: the checkpoint is in {run}); "
        f"run it later with: sslx evaluate {run}"
    )
    assert (run / "checkpoint-00000004.safetensors").exists()
