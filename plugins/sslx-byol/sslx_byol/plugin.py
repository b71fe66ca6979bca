"""Entry point of the ``byol`` plugin."""

from ssl_engine import api
from sslx_byol.task import BYOLTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(BYOLTask)
