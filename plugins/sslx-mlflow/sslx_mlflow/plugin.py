"""Entry point of the ``mlflow`` plugin (mlflow itself is imported only when a run uses the logger)."""

from ssl_engine import api
from sslx_mlflow.logger import MLflowLogger


@api.hookimpl
def register_loggers(register: api.LoggerRegister) -> None:
    register(
        "mlflow",
        MLflowLogger,
        help="config and metrics to MLflow: $MLFLOW_TRACKING_URI, else a file store in RUN_DIR/mlruns",
    )
