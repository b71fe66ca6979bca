"""Entry point of the ``mae`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_mae.task import MAETask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(MAETask)
