"""Entry point of the ``mae`` plugin."""

from ssl_engine import api
from sslx_mae.task import MAETask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(MAETask)
