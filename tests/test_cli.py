"""The ``sslx`` command as a user runs it: pretrain, resume, evaluate, list plugins, and bad input."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from safetensors import safe_open

from ssl_engine.checkpoint import FORMAT


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


def test_pretrain_writes_a_safetensors_checkpoint_and_evaluate_reads_it(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "R"
    result = invoke("pretrain", "--task", "rotation", "--steps", "4", "--batch-size", "8", "--out", run, "--no-probe")
    assert result.exit_code == 0, result.output
    [checkpoint] = checkpoints(run)
    with safe_open(str(checkpoint), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert metadata["format"] == FORMAT and metadata["step"] == "4"
    assert any(k.startswith("model/") for k in keys) and any(k.startswith("task/rotation/head") for k in keys)
    assert any(k.startswith("optim/main/") for k in keys) and "rng/torch" in keys
    assert tomllib.loads((run / "config.toml").read_text())["tasks"] == {
        "rotation": {"weight": 1.0, "settings": {"all_rotations": True}}
    }
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and "rotation/accuracy" in lines[-1] and "images_per_s" in lines[-1]

    evaluated = invoke("evaluate", run, "--protocol", "linear", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["test_size"] == 2000 and report["step"] == 4
    assert json.loads((run / "eval-linear-shapes.json").read_text())["accuracy"] == report["accuracy"]


def test_default_run_ends_with_probe_beside_random_init(invoke, image_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        "pretrain",
        "--task",
        "rotation",
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
    assert "pretrained rotation" in result.output and "random init" in result.output
    probe = json.loads((tmp_path / "R" / "probe.json").read_text())
    assert {"pretrained", "random_init"} <= set(probe)
    assert 0 <= probe["random_init"]["accuracy"] <= 1


def test_resume_continues_from_the_latest_checkpoint(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "R"
    common = (
        "--task",
        "rotation",
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
        (("--task", "rotation", "--backbone", "vgg99"), "unknown backbone 'vgg99'; available:"),
        (("--task", "rotation", "--data", "imagenet42"), "unknown data set 'imagenet42'; available:"),
        (("--task", "rotation", "--data", "/no/such/folder"), "data path /no/such/folder does not exist"),
        (
            ("--task", "rotation", "--image-size", "12", "--set", "rotation.nope=1"),
            "valid settings of 'rotation'",
        ),
        (("--task", "jigsaw", "--image-size", "16"), "task 'jigsaw' needs images of at least"),
        (("--task", "rotation", "--head", "rotation=upconv"), "needs a classifier head"),
        (("--task", "rotation", "--loss", "rotation=mse"), "needs a classification loss"),
        (("--task", "rotation", "--head", "jigsaw=mlp"), "not in this run"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_the_problem(invoke, tmp_path: Path, args, message) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", *args, "--steps", "1", "--out", tmp_path / "R")
    assert result.exit_code == 2, result.output
    assert message in result.output
    if "unknown task" in message:
        assert "jigsaw" in result.output and "rotation" in result.output  # the available names are listed
    assert not (tmp_path / "R").exists()  # refused before anything was written


def test_empty_folder_is_refused(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    result = invoke("pretrain", "--task", "rotation", "--data", tmp_path / "empty", "--out", tmp_path / "R")
    assert result.exit_code == 2 and "holds no images" in result.output


def test_evaluate_refuses_unlabelled_data_and_unknown_protocol(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import write_images

    run = tmp_path / "R"
    flat = tmp_path / "flat"
    write_images(flat, 20)
    assert (
        invoke(
            "pretrain",
            "--task",
            "rotation",
            "--data",
            flat,
            "--image-size",
            "16",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            run,
        ).exit_code
        == 0
    )  # no labels: no probe, no error
    unlabelled = invoke("evaluate", run)
    assert unlabelled.exit_code == 2 and "no labels" in unlabelled.output
    unknown = invoke("evaluate", run, "--protocol", "telepathy")
    assert (
        unknown.exit_code == 2 and "unknown evaluator 'telepathy'; available: finetune, knn, linear" in unknown.output
    )


def test_console_script_runs_in_a_fresh_process(sslx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = sslx(
        "pretrain",
        "--task",
        "rotation",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "R",
        "--no-probe",
        "--log-every",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stderr and "\r" not in result.stderr and "\x1b" not in result.stderr
    assert checkpoints(tmp_path / "R")


def test_python_api_loads_the_trained_backbone(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from ssl_engine import load_backbone, load_representation
    from ssl_engine.checkpoint import read_checkpoint

    run = tmp_path / "R"
    assert (
        invoke(
            "pretrain", "--task", "rotation", "--steps", "2", "--batch-size", "8", "--out", run, "--no-probe"
        ).exit_code
        == 0
    )
    backbone = load_backbone(run)
    saved = read_checkpoint(checkpoints(run)[-1]).module_state("model")
    assert all(torch.equal(value, saved[key]) for key, value in backbone.state_dict().items())
    features = load_representation(run)(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, backbone.feature_dim)
