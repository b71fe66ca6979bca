"""Entry point of the ``superres`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_superres.task import SuperResolutionTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(SuperResolutionTask)
