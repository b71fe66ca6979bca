"""Entry point of the ``rotation`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_rotation.task import RotationTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(RotationTask)
