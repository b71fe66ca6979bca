"""Entry point of the ``vicreg`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_vicreg.task import VICRegTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(VICRegTask)
