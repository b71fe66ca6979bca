"""Entry point of the ``colorization`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_colorization.task import ColorizationTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(ColorizationTask)
