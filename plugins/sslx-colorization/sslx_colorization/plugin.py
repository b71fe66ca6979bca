"""Entry point of the ``colorization`` plugin."""

from ssl_engine import api
from sslx_colorization.task import ColorizationTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(ColorizationTask)
