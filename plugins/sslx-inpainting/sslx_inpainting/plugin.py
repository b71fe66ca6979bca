"""Entry point of the ``inpainting`` plugin."""

from ssl_engine import api
from sslx_inpainting.task import InpaintingTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(InpaintingTask)
