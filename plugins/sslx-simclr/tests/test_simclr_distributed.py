"""NT-Xent on two processes (gloo, CPU) against one process on the concatenated batch, on fixed embeddings.

What is compared, for ``W = 2`` ranks with ``M`` views each and the ``2M``-view batch in one process:

* rank ``r``'s loss equals the one-process mean of the per-view losses over rank ``r``'s views, so the mean of
  the ranks' losses is the one-process loss;
* after each rank's ``loss_r.backward()``, rank ``r``'s gradient with respect to its own embeddings, divided by
  ``W``, equals the gradient of the one-process loss with respect to those rows. The gather's backward sums what
  every rank's loss sends to these rows, and DistributedDataParallel then divides parameter gradients by ``W``
  (it averages them), hence the ``1 / W``;
* through DistributedDataParallel itself (a linear projection wrapped in DDP): the averaged parameter gradients
  equal the one-process gradients of the one-process loss;
* the same losses, gradients and gathered rows with the gather and the loss under ``torch.compile`` (the gather
  traced whole, ``fullgraph=True``), as ``--compile`` may run them.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from sslx_simclr.loss import NTXentLoss
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from ssl_engine.api import gather_from_all_ranks, is_distributed
from ssl_engine.testing import spawn_ranks

WORLD = 2
VIEWS_PER_RANK = 6  # 3 images x 2 views
FEATURES, DIM = 5, 8
TEMPERATURE = 0.3  # not the default, so the temperature is carried through


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of the projection, embeddings and positives of the whole ``(W * M)``-view batch."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(WORLD * VIEWS_PER_RANK, FEATURES, generator=generator)
    embeddings = torch.randn(WORLD * VIEWS_PER_RANK, DIM, generator=generator)
    return features, embeddings, torch.arange(WORLD * VIEWS_PER_RANK) ^ 1


def projection() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(FEATURES, DIM)


def rank_result(rank: int) -> dict[str, object]:
    features, embeddings, targets = fixed_batch()
    rows = slice(rank * VIEWS_PER_RANK, (rank + 1) * VIEWS_PER_RANK)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mine = embeddings[rows].clone().requires_grad_()
        loss, logits = NTXentLoss(TEMPERATURE)(mine, targets[rows])
        loss.backward()
        model = DistributedDataParallel(projection())
        ddp_loss, _ = NTXentLoss(TEMPERATURE)(model(features[rows]), targets[rows])
        ddp_loss.backward()
        gathered = gather_from_all_ranks(torch.full((2, 3), float(rank)))
    return {
        "loss": loss.detach(),
        "grad": mine.grad,
        "logits": logits,
        "ddp_grads": [parameter.grad for parameter in model.parameters()],
        "gathered": gathered,
        "distributed": is_distributed(),
        "deprecated": [str(w.message) for w in caught if issubclass(w.category, FutureWarning)],
    }


def compiled_rank_result(rank: int) -> dict[str, object]:
    torch.set_num_threads(1)  # two ranks compiling at once on a small machine
    _, embeddings, targets = fixed_batch()
    rows = slice(rank * VIEWS_PER_RANK, (rank + 1) * VIEWS_PER_RANK)
    mine = embeddings[rows].clone().requires_grad_()
    gather = torch.compile(gather_from_all_ranks, fullgraph=True)
    gathered = gather(mine)
    gathered.sum().backward()  # through the compiled gather alone: every rank's ones come back, summed
    assert mine.grad is not None
    gather_grad = mine.grad.clone()
    mine.grad = None
    loss, logits = torch.compile(NTXentLoss(TEMPERATURE))(mine, targets[rows])
    loss.backward()
    return {"loss": loss.detach(), "grad": mine.grad, "logits": logits, "gathered": gathered.detach(),
            "gather_grad": gather_grad}  # fmt: skip


def one_process() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-view losses, logits and the gradient of the mean loss (w.r.t. the embeddings) of the whole batch."""
    _, embeddings, targets = fixed_batch()
    embeddings.requires_grad_()
    per_view, logits = NTXentLoss(TEMPERATURE, partial(F.cross_entropy, reduction="none"))(embeddings, targets)
    (grad,) = torch.autograd.grad(per_view.mean(), embeddings)
    return per_view.detach(), logits, grad


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_result, tmp_path, world=WORLD)
    features, _, targets = fixed_batch()
    per_view, logits, grad = one_process()
    whole = per_view.mean()
    for rank, result in enumerate(ranks):
        rows = slice(rank * VIEWS_PER_RANK, (rank + 1) * VIEWS_PER_RANK)
        assert result["distributed"]
        assert not result["deprecated"]  # torch 2.14 deprecates torch.distributed.nn.functional's collectives
        torch.testing.assert_close(result["loss"], per_view[rows].mean().detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["grad"] / WORLD, grad[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["logits"], logits[rows], atol=1e-5, rtol=1e-5)  # -inf on own column
        expected_gathered = torch.cat([torch.full((2, 3), float(r)) for r in range(WORLD)])
        assert torch.equal(result["gathered"], expected_gathered)  # rank order
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, whole.detach(), atol=1e-5, rtol=1e-5)

    model = projection()
    NTXentLoss(TEMPERATURE)(model(features), targets)[0].backward()
    for result in ranks:
        for ddp_grad, parameter in zip(result["ddp_grads"], model.parameters(), strict=True):
            torch.testing.assert_close(ddp_grad, parameter.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_under_torch_compile_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(compiled_rank_result, tmp_path, world=WORLD)
    _, embeddings, _ = fixed_batch()
    per_view, logits, grad = one_process()
    for rank, result in enumerate(ranks):
        rows = slice(rank * VIEWS_PER_RANK, (rank + 1) * VIEWS_PER_RANK)
        assert torch.equal(result["gathered"], embeddings.detach())
        assert torch.equal(result["gather_grad"], torch.full_like(result["gather_grad"], WORLD))
        torch.testing.assert_close(result["loss"], per_view[rows].mean().detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["grad"] / WORLD, grad[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["logits"], logits[rows], atol=1e-5, rtol=1e-5)


def test_without_a_process_group_the_gather_is_the_identity() -> None:
    rows = torch.randn(4, 3)
    assert not is_distributed()
    assert gather_from_all_ranks(rows) is rows
