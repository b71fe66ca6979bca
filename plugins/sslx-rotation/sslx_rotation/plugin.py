"""Entry point of the ``rotation`` plugin."""

from ssl_engine import api
from sslx_rotation.task import RotationTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(RotationTask)
