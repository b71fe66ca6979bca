"""Entry point of the ``barlowtwins`` plugin."""

from ssl_engine import api
from sslx_barlowtwins.task import BarlowTwinsTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(BarlowTwinsTask)
