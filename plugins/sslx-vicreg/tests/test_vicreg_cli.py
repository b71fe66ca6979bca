"""VICReg through the real command line, each command in a fresh process with the installed plugins
(:class:`~ssl_engine.testing.CommandLineTests`): ``sslx show``, ``sslx pretrain`` refusing a negative weight, a zero
width or gamma and any ``--loss``, and a run mixed with rotation."""

from __future__ import annotations

import pytest
from sslx_vicreg.task import VICRegTask

from ssl_engine.testing import CommandLineTests

pytestmark = pytest.mark.slow


class TestCommandLine(CommandLineTests):
    task_class = VICRegTask
    refused = ({"variance_weight": -1}, {"projector_dim": 0}, {"gamma": 0})
