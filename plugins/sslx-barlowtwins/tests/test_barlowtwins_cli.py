"""Barlow Twins through the real command line, each command in a fresh process with the installed plugins
(:class:`~ssl_engine.testing.CommandLineTests`): ``sslx show``, ``sslx pretrain`` refusing a zero lambda or width, a
negative scale and any ``--loss``, and a run mixed with rotation."""

from __future__ import annotations

import pytest
from sslx_barlowtwins.task import BarlowTwinsTask

from ssl_engine.testing import CommandLineTests

pytestmark = pytest.mark.slow


class TestCommandLine(CommandLineTests):
    task_class = BarlowTwinsTask
    refused = ({"lambda": 0}, {"projector_dim": 0}, {"scale": -1})
