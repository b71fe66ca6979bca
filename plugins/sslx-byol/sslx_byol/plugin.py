"""Entry point of the ``byol`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_byol.task import BYOLTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(BYOLTask)
