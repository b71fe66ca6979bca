"""Entry point of the ``vicreg`` plugin."""

from ssl_engine import api
from sslx_vicreg.task import VICRegTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(VICRegTask)
