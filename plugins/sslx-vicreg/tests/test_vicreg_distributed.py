"""VICReg on two processes (gloo, CPU) against one process on the whole batch.

What is compared, for ``W = 2`` ranks with ``B`` images each and the ``W * B``-image batch in one process:

* the loss on fixed embeddings: each rank gathers the global batch, so its three terms are the one-process terms
  (the variance and covariance over the global batch), and
  after ``loss.backward()`` on every rank, each rank's gradient on its own rows, divided by ``W``, is the
  one-process gradient on those rows (the gather's backward sums what all ``W`` identical losses send back,
  and DistributedDataParallel divides parameter gradients by ``W``);
* a whole training step of the task: pseudo-labels of each rank's slice of the global batch, the backbone and the
  expander in DistributedDataParallel with their batch norms over the global batch (``--sync-bn``: the
  paper's code converts them to SyncBatchNorm), the task's forward, backward and one SGD step. Loss terms,
  metrics, averaged gradients and the parameters after the step equal those of one process on the whole batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sslx_vicreg.loss import VICRegLoss
from sslx_vicreg.task import VICRegTask

from ssl_engine.api import gather_from_all_ranks
from ssl_engine.testing import (
    assert_rank_losses_match,
    assert_steps_match,
    random_images,
    rank_rows,
    rank_sgd_step,
    spawn_ranks,
    task_instance,
    twin_embeddings,
)

WORLD = 2
IMAGES_PER_RANK = 4
DIM = 6
WEIGHTS = {"invariance": 20.0, "variance": 30.0, "covariance": 2.0}  # not the defaults: carried through
GAMMA = 1.2
SEED, STEP = 3, 11

pytestmark = pytest.mark.slow


def make_task() -> VICRegTask:
    given = {f"{term}_weight": weight for term, weight in WEIGHTS.items()}
    return task_instance(VICRegTask, 32, **given, gamma=GAMMA, projector_dim=8)


def weighted(terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return sum((weight * term for weight, term in zip(WEIGHTS.values(), terms, strict=True)), torch.tensor(0.0))


def rank_result(rank: int) -> dict[str, object]:
    rows = rank_rows(rank, IMAGES_PER_RANK)
    z_a, z_b = (z[rows].clone().requires_grad_() for z in twin_embeddings(WORLD * IMAGES_PER_RANK, DIM))
    terms = VICRegLoss(GAMMA)(gather_from_all_ranks(z_a), gather_from_all_ranks(z_b))
    weighted(terms).backward()
    step = rank_sgd_step(make_task(), random_images(WORLD * IMAGES_PER_RANK), rank, WORLD, seed=SEED, step=STEP)
    return step | {"terms": [term.detach() for term in terms], "grads": (z_a.grad, z_b.grad)}


def test_two_processes_train_as_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_result, tmp_path, world=WORLD)

    # The loss on fixed embeddings.
    z_a, z_b = (z.requires_grad_() for z in twin_embeddings(WORLD * IMAGES_PER_RANK, DIM))
    terms = VICRegLoss(GAMMA)(z_a, z_b)
    assert float(terms[1].detach()) > 0  # the variance hinge is active, so its global statistics matter
    assert_rank_losses_match(ranks, terms, torch.autograd.grad(weighted(terms), (z_a, z_b)))

    # A whole step of the task; float32 sums in another order (batch norm over two processes): 1e-5 of the scale.
    images = random_images(WORLD * IMAGES_PER_RANK)
    names = ("invariance", "variance", "covariance", "std")
    # The monitor over the global batch: the mean of the ranks' accuracies is the one-process accuracy.
    assert_steps_match(ranks, make_task(), images, seed=SEED, step=STEP, terms=names, averaged=("accuracy",))
