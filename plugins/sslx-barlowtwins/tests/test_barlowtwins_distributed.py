"""Barlow Twins on two processes (gloo, CPU) against one process on the whole batch (the kit's
:func:`~ssl_engine.testing.rank_two_view_check`): the loss on fixed embeddings, gathered from every process, and a
whole training step with the projector's batch norms over the global batch (``--sync-bn``: the paper's code converts
them to SyncBatchNorm); the monitor's accuracy, over the global batch, is the mean of the processes' accuracies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sslx_barlowtwins.loss import BarlowTwinsLoss
from sslx_barlowtwins.task import BarlowTwinsTask

from ssl_engine.testing import assert_two_view_check_matches, rank_two_view_check, spawn_ranks, task_instance

WORLD = 2
LAMBDA = 0.05  # not the default, so the setting is carried through
WEIGHTS = (1.0, LAMBDA)  # of the terms invariance and redundancy

pytestmark = pytest.mark.slow


def make_task() -> BarlowTwinsTask:
    return task_instance(BarlowTwinsTask, 32, **{"lambda": LAMBDA, "projector_dim": 8})


def rank_result(rank: int) -> dict[str, object]:
    return rank_two_view_check(make_task(), BarlowTwinsLoss(), WEIGHTS, rank, WORLD)


def test_two_processes_train_as_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_result, tmp_path, world=WORLD)
    # float32 sums in another order (batch norm over two processes): gradients 5e-5 of the tensor's scale: a bias
    # just before batch norm has a true gradient of zero, so what is compared there is the rounding of two sums of
    # ~1-sized terms (seen: 1.2e-5).
    names = ("invariance", "redundancy", "on_diagonal", "off_diagonal")
    assert_two_view_check_matches(ranks, make_task(), BarlowTwinsLoss(), WEIGHTS, terms=names, grad_atol=5e-5)
