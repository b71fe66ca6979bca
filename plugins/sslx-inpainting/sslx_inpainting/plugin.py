"""Entry point of the ``inpainting`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_inpainting.task import InpaintingTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(InpaintingTask)
