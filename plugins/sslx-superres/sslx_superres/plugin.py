"""Entry point of the ``superres`` plugin."""

from ssl_engine import api
from sslx_superres.task import SuperResolutionTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(SuperResolutionTask)
