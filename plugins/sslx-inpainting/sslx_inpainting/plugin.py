"""Entry point of the ``inpainting`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_inpainting.task import InpaintingTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(InpaintingTask)
