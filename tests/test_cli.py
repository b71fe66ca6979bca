"""The ``sslx`` command as a user runs it: pretrain, resume, evaluate, list plugins, and bad input."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from safetensors import safe_open

from ssl_engine.checkpoint import FORMAT
from ssl_engine.settings import TaskSetting
from ssl_engine.task import ImageSizeError, TaskContext
from ssl_engine.testing import KIT_DATA, ReferenceTask, cli_plugins, pretrain_cli, run_cli
from ssl_engine.testing import REFERENCE_TASK as REFERENCE
from tests.conftest import LargeImagesTask

LARGE = LargeImagesTask.name


def checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint-*.safetensors"))


def test_plugins_json_lists_each_task_from_its_own_distribution(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    by_task = {name: p for p in json.loads(result.output)["plugins"] for name in p["registered"].get("task", [])}
    assert by_task["rotation"]["distribution"] == "sslx-rotation"
    assert by_task["jigsaw"]["distribution"] == "sslx-jigsaw"
    assert by_task["rotation"]["version"] == "0.1.0" and "register_tasks" in by_task["rotation"]["hooks"]


def test_plugins_human_listing(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "rotation  (sslx-rotation 0.1.0)" in result.output and "backbones" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_pretrain_writes_a_safetensors_checkpoint_and_evaluate_reads_it(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "R"
    result = invoke("pretrain", "--task", REFERENCE, "--data", KIT_DATA, "--steps", "4", "--batch-size", "8",
                    "--out", run, "--no-probe")  # fmt: skip
    assert result.exit_code == 0, result.output
    [checkpoint] = checkpoints(run)
    with safe_open(str(checkpoint), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert metadata["format"] == FORMAT and metadata["step"] == "4"
    assert any(k.startswith("model/") for k in keys) and any(k.startswith(f"task/{REFERENCE}/head") for k in keys)
    assert any(k.startswith("optim/main/") for k in keys) and "rng/torch" in keys
    assert tomllib.loads((run / "config.toml").read_text())["tasks"] == {REFERENCE: {"weight": 1.0}}  # no settings
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and f"{REFERENCE}/accuracy" in lines[-1] and "images_per_s" in lines[-1]

    evaluated = invoke("evaluate", run, "--protocol", "linear", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)  # progress lines go to stderr
    assert 0.0 <= report["accuracy"] <= 1.0 and report["test_size"] == 32 and report["step"] == 4
    assert json.loads((run / f"eval-linear-{KIT_DATA}.json").read_text())["accuracy"] == report["accuracy"]


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_default_run_ends_with_probe_beside_random_init(invoke, image_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        "pretrain",
        "--task",
        REFERENCE,
        "--data",
        image_folder,
        "--image-size",
        "16",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "R",
    )
    assert result.exit_code == 0, result.output
    assert f"pretrained {REFERENCE}" in result.output and "random init" in result.output
    probe = json.loads((tmp_path / "R" / "probe.json").read_text())
    assert {"pretrained", "random_init"} <= set(probe)
    assert 0 <= probe["random_init"]["accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_resume_continues_from_the_latest_checkpoint(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "R"
    common = (
        "--task",
        REFERENCE,
        "--data",
        KIT_DATA,
        "--batch-size",
        "8",
        "--out",
        run,
        "--no-probe",
        "--checkpoint-every",
        "2",
    )
    assert invoke("pretrain", *common, "--steps", "3").exit_code == 0
    again = invoke("pretrain", *common, "--steps", "3")
    assert again.exit_code == 2 and "already exists" in again.output and "--resume" in again.output
    resumed = invoke("pretrain", *common, "--steps", "5", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [p.name for p in checkpoints(run)][-1] == "checkpoint-00000005.safetensors"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 5]
    changed = invoke("pretrain", *common, "--steps", "6", "--resume", "--lr", "0.3")
    assert changed.exit_code == 2 and "lr" in changed.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--task", "nope"), "unknown task 'nope'; available: "),
        (("--task", REFERENCE, "--backbone", "vgg99"), "unknown backbone 'vgg99'; available:"),
        (("--task", REFERENCE, "--data", "imagenet42"), "unknown data set 'imagenet42'; available:"),
        (("--task", REFERENCE, "--data", "/no/such/folder"), "data path /no/such/folder does not exist"),
        (
            ("--task", REFERENCE, "--image-size", "12", "--set", f"{REFERENCE}.nope=1"),
            f"valid settings of '{REFERENCE}'",
        ),
        (("--task", LARGE, "--image-size", "16"), f"task '{LARGE}' needs images of at least"),
        (("--task", REFERENCE, "--head", f"{REFERENCE}=upconv"), "needs a classifier head"),
        (("--task", REFERENCE, "--loss", f"{REFERENCE}=mse"), "needs a classification loss"),
        (("--task", REFERENCE, "--head", f"{LARGE}=mlp"), "not in this run"),
    ],
)
@pytest.mark.usefixtures("reference_cli")
def test_bad_input_exits_2_with_a_message_naming_the_problem(invoke, tmp_path: Path, args, message) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", *args, "--steps", "1", "--out", tmp_path / "R")
    assert result.exit_code == 2, result.output
    assert message in result.output
    if "unknown task" in message:
        assert LARGE in result.output and REFERENCE in result.output  # the available names are listed
    assert not (tmp_path / "R").exists()  # refused before anything was written


class RoomTask(ReferenceTask):
    """The kit's reference task, refusing images smaller than its ``room`` setting when it is built."""

    name = "kit_reference_room"
    settings = (TaskSetting("room", int, 8, "the smallest image side it takes", minimum=8, maximum=1024),)

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        if context.image_size < self.hparams["room"]:
            raise ImageSizeError(f"task {self.name!r} needs images of at least {self.hparams['room']} px")


def test_images_too_small_for_the_tasks_settings_are_a_usage_error(tmp_path: Path) -> None:
    with cli_plugins(RoomTask, reference=False):
        result = run_cli("pretrain", "--task", RoomTask.name, "--set", f"{RoomTask.name}.room=40",
                         "--image-size", 32, "--out", tmp_path / "R")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "at least 40 px" in result.stderr and "plugin" not in result.stderr
    assert not (tmp_path / "R").exists()


@pytest.mark.usefixtures("reference_cli")
def test_empty_folder_is_refused(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    result = invoke("pretrain", "--task", REFERENCE, "--data", tmp_path / "empty", "--out", tmp_path / "R")
    assert result.exit_code == 2 and "holds no images" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_evaluate_refuses_unlabelled_data_and_unknown_protocol(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import write_images

    flat = tmp_path / "flat"
    write_images(flat, 20)
    run = pretrain_cli(tmp_path, REFERENCE, "--data", flat, "--image-size", 16, "--steps", 2, "--probe")
    # no labels: the closing probe is skipped, no error
    unlabelled = invoke("evaluate", run)
    assert unlabelled.exit_code == 2 and "no labels" in unlabelled.output
    unknown = invoke("evaluate", run, "--protocol", "telepathy")
    assert (
        unknown.exit_code == 2 and "unknown evaluator 'telepathy'; available: finetune, knn, linear" in unknown.output
    )


@pytest.mark.slow
def test_console_script_runs_in_a_fresh_process(sslx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["--steps", "2", "--batch-size", "8", "--out", tmp_path / "R", "--no-probe", "--log-every", "1"]
    result = sslx("pretrain", "--task", "rotation", *args)  # the installed plugin, found in a fresh process
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stderr and "\r" not in result.stderr and "\x1b" not in result.stderr
    assert checkpoints(tmp_path / "R")


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_python_api_loads_the_trained_backbone(tmp_path: Path) -> None:
    import torch

    from ssl_engine import load_backbone, load_representation
    from ssl_engine.checkpoint import read_checkpoint

    run = pretrain_cli(tmp_path, REFERENCE, "--data", KIT_DATA, "--steps", 2)
    backbone = load_backbone(run)
    saved = read_checkpoint(checkpoints(run)[-1]).module_state("model")
    assert all(torch.equal(value, saved[key]) for key, value in backbone.state_dict().items())
    features = load_representation(run)(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, backbone.feature_dim)
