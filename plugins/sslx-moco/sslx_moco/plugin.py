"""Entry point of the ``moco`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_moco.task import MoCoTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(MoCoTask)
