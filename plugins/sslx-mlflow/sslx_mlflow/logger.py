"""A run's config and metrics in MLflow: its parameters once, its metrics at every logged step.

Where they go is MLflow's own setting, ``MLFLOW_TRACKING_URI`` (a server, ``sqlite:///...``, ``file:/...``);
without it, a file store in the run directory (``RUN_DIR/mlruns``), which needs no server and no network. The
MLflow run is named after the run directory, in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``sslx``), and
its id and store are kept in ``RUN_DIR/mlflow.json``, so ``sslx pretrain --resume`` continues the same MLflow run in
the same store.

MLflow keeps every value logged, so the steps a resumed run trains again (those after its checkpoint) appear twice
in a metric's history; the later value is the one the run kept (``metrics.jsonl`` holds only that one).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ssl_engine import api

RUN_FILE = "mlflow.json"
"""In the run directory: ``{"tracking_uri": ..., "run_id": ...}`` of the MLflow run, for ``--resume``."""
LOCAL_STORE = "mlruns"
DEFAULT_EXPERIMENT = "sslx"
INSTALL_HINT = "pip install mlflow-skinny"
# What MLflow's store takes in one log_batch call.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as MLflow parameters: nested tables joined with dots (``tasks.rotation.weight``), values as text,
    ``None`` (a default left to the run) left out."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params |= flat_params(value, f"{name}.")
        elif value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            params[name] = text[:MAX_PARAM_LENGTH]
    return params


def is_file_store(uri: str) -> bool:
    """Whether ``uri`` names a folder on this machine (``file:`` or a plain path) rather than a server or a database."""
    return urlparse(uri).scheme in ("", "file")


class MLflowLogger(api.MetricsLogger):
    """Logs to MLflow through its client (no global active run is started, so it never clashes with the user's)."""

    def __init__(self) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise ModuleNotFoundError(f"the mlflow logger needs MLflow ({INSTALL_HINT})") from error
        self._client_class = MlflowClient
        self.client: Any = None
        self.run_id = ""

    def open(self, run_dir: Path, start_step: int, config: Mapping[str, Any]) -> None:
        saved = run_dir / RUN_FILE
        kept: dict[str, str] = json.loads(saved.read_text()) if saved.exists() else {}
        default = (run_dir / LOCAL_STORE).resolve().as_uri()
        uri = kept.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or default
        if is_file_store(uri):
            # MLflow 3 keeps its file store in maintenance mode, behind this switch; it is what works offline.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = self._client_class(tracking_uri=uri)
        if kept.get("run_id"):
            self.run_id = kept["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "sslx.resumed_from_step", str(start_step))
        else:
            self.run_id = self._create_run(run_dir)
            saved.write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}, indent=2) + "\n")
        self._log_new_params(flat_params(config))

    def _create_run(self, run_dir: Path) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        tags = {"sslx.run_dir": str(run_dir.resolve())}
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        return str(run.info.run_id)

    def _log_new_params(self, params: dict[str, str]) -> None:
        """Log the parameters the run does not hold yet: MLflow refuses to change one, and a resume may change the
        budget or logging (``config.toml`` has the current values)."""
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params
        new = [Param(key, value) for key, value in sorted(params.items()) if key not in held]
        for start in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[start : start + PARAMS_PER_BATCH])

    def log(self, step: int, values: Mapping[str, object]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in self.scalars(values).items()]
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    def close(self, outcome: api.RunOutcome = "finished") -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, status=STATUS[outcome])
            self.client = None
