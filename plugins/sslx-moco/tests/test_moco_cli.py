"""MoCo through the real command line, each command in a fresh process with the installed plugins
(:class:`~ssl_engine.testing.CommandLineTests`): ``sslx show``, ``sslx pretrain`` refusing a momentum above 1, a zero
temperature and a queue that is no multiple of the global batch, and a run mixed with rotation that pushes its keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sslx_moco.task import MoCoTask

from ssl_engine.testing import CommandLineTests, assert_refused_before_training

pytestmark = pytest.mark.slow


class TestCommandLine(CommandLineTests):
    task_class = MoCoTask
    refused = ({"momentum": 1.5}, {"temperature": 0})

    def check_mixed_run(self, tensors: dict[str, torch.Tensor], metrics: str) -> None:
        assert int(tensors["task/moco/queue_next"]) == 16  # two steps of 8 keys

    def test_a_queue_that_is_no_multiple_of_the_global_batch_is_refused(self, tmp_path: Path) -> None:
        message = "moco.queue_size=4096 must be a multiple of the global batch of 48"
        assert_refused_before_training("moco", tmp_path, "--batch-size", "48", message=message)
