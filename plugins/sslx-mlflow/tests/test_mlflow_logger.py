"""The mlflow logger on real runs, read back with MLflow's own client from the local file store (no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sslx_mlflow.plugin
from sslx_mlflow.logger import RUN_FILE, flat_params, is_file_store

from ssl_engine.testing import KIT_BACKBONE, KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli, run_cli

tracking = pytest.importorskip("mlflow.tracking")

FAST = ("--batch-size", 8, "--data", KIT_DATA, "--backbone", KIT_BACKBONE, "--image-size", 32, "--workers", 0)
PLUGIN = ("mlflow", sslx_mlflow.plugin)


@pytest.fixture(autouse=True)
def local_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default store (RUN_DIR/mlruns), whatever the environment of the machine says; MLflow 3's switch for
    file stores is left to the plugin (and undone after the test)."""
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(variable, "")  # remembered as it was, restored after the test
        monkeypatch.delenv(variable)


def mlflow_run(run_dir: Path) -> tuple[Any, Any]:
    """MLflow's client on the run's store, and the MLflow run kept in ``RUN_DIR/mlflow.json``."""
    kept = json.loads((run_dir / RUN_FILE).read_text())
    client = tracking.MlflowClient(tracking_uri=kept["tracking_uri"])
    return client, client.get_run(kept["run_id"])


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_config_becomes_flat_text_params() -> None:
    config = {"steps": 5, "lr": None, "probe": False, "tasks": {"rotation": {"weight": 1.0, "settings": {"k": [1]}}}}
    assert flat_params(config) == {
        "steps": "5",
        "probe": "false",
        "tasks.rotation.weight": "1.0",
        "tasks.rotation.settings.k": "[1]",
    }
    assert is_file_store("file:///tmp/mlruns") and is_file_store("mlruns")
    assert not is_file_store("http://localhost:5000") and not is_file_store("sqlite:///mlflow.db")


@pytest.mark.slow
def test_a_run_logs_its_config_and_every_logged_step_to_the_local_store(tmp_path: Path) -> None:
    with cli_plugins(PLUGIN):
        run = pretrain_cli(tmp_path, REFERENCE_TASK, *FAST, "--steps", 5, "--log-every", 2, "--loggers", "jsonl,mlflow")
    client, logged = mlflow_run(run)
    assert (run / "mlruns").is_dir() and logged.info.run_name == run.name and logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["steps"] == "5" and params["loggers"] == "jsonl,mlflow" and params["data"] == KIT_DATA
    assert f"tasks.{REFERENCE_TASK}.weight" in params
    lines = metric_lines(run)
    assert [line["step"] for line in lines] == [2, 4, 5]
    numeric = [key for key, value in lines[0].items() if key != "step" and isinstance(value, float)]
    assert "loss" in numeric and "lr" in numeric
    for key in numeric:
        assert history(client, logged.info.run_id, key) == [(line["step"], line[key]) for line in lines], key


@pytest.mark.slow
def test_a_resume_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with cli_plugins(PLUGIN):
        pretrain_cli(
            tmp_path, REFERENCE_TASK, *FAST, "--steps", 4, "--log-every", 2, "--loggers", "mlflow", "--out", run
        )
        client, first = mlflow_run(run)
        result = run_cli("pretrain", "--out", run, "--resume", "--steps", 6)
        assert result.exit_code == 0, result.output
    client, resumed = mlflow_run(run)
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == "FINISHED"
    assert len(client.search_runs([resumed.info.experiment_id])) == 1
    assert resumed.data.tags["sslx.resumed_from_step"] == "4"
    assert resumed.data.params["steps"] == "4"  # MLflow keeps a parameter as first logged; config.toml has 6
    assert history(client, resumed.info.run_id, "loss") == [(line["step"], line["loss"]) for line in metric_lines(run)]
    assert [step for step, _ in history(client, resumed.info.run_id, "loss")] == [2, 4, 6]


@pytest.mark.slow
def test_the_tracking_uri_comes_from_mlflows_own_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = (tmp_path / "shared-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab")
    with cli_plugins(PLUGIN):
        run = pretrain_cli(tmp_path, REFERENCE_TASK, *FAST, "--steps", 2, "--loggers", "mlflow")
    client, logged = mlflow_run(run)
    assert json.loads((run / RUN_FILE).read_text())["tracking_uri"] == store and not (run / "mlruns").exists()
    assert client.get_experiment(logged.info.experiment_id).name == "lab"
