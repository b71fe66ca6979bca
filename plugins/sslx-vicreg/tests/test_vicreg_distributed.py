"""VICReg on two processes (gloo, CPU) against one process on the whole batch (the kit's
:func:`~ssl_engine.testing.rank_two_view_check`): the three terms on fixed embeddings gathered from every process
(the variance and covariance over the global batch, as the paper's ``FullGatherLayer`` makes them), and a whole
training step with the expander's batch norms over the global batch (``--sync-bn``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sslx_vicreg.loss import VICRegLoss
from sslx_vicreg.task import VICRegTask

from ssl_engine.testing import assert_two_view_check_matches, rank_two_view_check, spawn_ranks, task_instance

WORLD = 2
WEIGHTS = {"invariance": 20.0, "variance": 30.0, "covariance": 2.0}  # not the defaults: carried through
GAMMA = 1.2

pytestmark = pytest.mark.slow


def make_task() -> VICRegTask:
    given = {f"{term}_weight": weight for term, weight in WEIGHTS.items()}
    return task_instance(VICRegTask, 32, **given, gamma=GAMMA, projector_dim=8)


def rank_result(rank: int) -> dict[str, object]:
    return rank_two_view_check(make_task(), VICRegLoss(GAMMA), tuple(WEIGHTS.values()), rank, WORLD)


def test_two_processes_train_as_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_result, tmp_path, world=WORLD)
    # float32 sums in another order (batch norm over two processes): 1e-5 of the scale.
    names = ("invariance", "variance", "covariance", "std")
    terms = assert_two_view_check_matches(ranks, make_task(), VICRegLoss(GAMMA), tuple(WEIGHTS.values()), terms=names)
    assert float(terms[1].detach()) > 0  # the variance hinge is active, so its global statistics matter
