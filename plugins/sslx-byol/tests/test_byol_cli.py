"""BYOL through the real command line, each command in a fresh process with the installed plugins
(:class:`~ssl_engine.testing.CommandLineTests`): ``sslx show``, ``sslx pretrain`` refusing a momentum outside
[0, 1] and any ``--loss``, and a run mixed with rotation."""

from __future__ import annotations

import pytest
from sslx_byol.task import BYOLTask

from ssl_engine.testing import CommandLineTests

pytestmark = pytest.mark.slow


class TestCommandLine(CommandLineTests):
    task_class = BYOLTask
    refused = ({"base_momentum": 1.01}, {"base_momentum": -1})
