"""sslx plugin: the logger ``mlflow``, a run's config and metrics to an MLflow tracking store."""

from sslx_mlflow.logger import MLflowLogger

__all__ = ["MLflowLogger"]
