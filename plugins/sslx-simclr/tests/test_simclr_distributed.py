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

import socket
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sslx_simclr.loss import NTXentLoss
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from ssl_engine.api import gather_from_all_ranks, is_distributed

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


def run_rank(rank: int, port: int, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
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
        torch.save(
            {
                "loss": loss.detach(),
                "grad": mine.grad,
                "logits": logits,
                "ddp_grads": [parameter.grad for parameter in model.parameters()],
                "gathered": gathered,
                "distributed": is_distributed(),
                "deprecated": [str(w.message) for w in caught if issubclass(w.category, FutureWarning)],
            },
            out / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def run_rank_compiled(rank: int, port: int, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
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
        torch.save(
            {
                "loss": loss.detach(),
                "grad": mine.grad,
                "logits": logits,
                "gathered": gathered.detach(),
                "gather_grad": gather_grad,
            },
            out / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn_ranks(
    out: Path, deadline_s: float = 120.0, target: Callable[[int, int, Path], None] = run_rank
) -> list[dict]:
    context = mp.spawn(target, args=(free_port(), out), nprocs=WORLD, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {WORLD} ranks did not finish in {deadline_s:.0f} s")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def test_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(tmp_path)
    features, embeddings, targets = fixed_batch()
    embeddings.requires_grad_()
    per_view, logits = NTXentLoss(TEMPERATURE, partial(F.cross_entropy, reduction="none"))(embeddings, targets)
    whole = per_view.mean()
    (grad,) = torch.autograd.grad(whole, embeddings)
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


def test_under_torch_compile_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(tmp_path, deadline_s=300.0, target=run_rank_compiled)
    _, embeddings, targets = fixed_batch()
    embeddings.requires_grad_()
    per_view, logits = NTXentLoss(TEMPERATURE, partial(F.cross_entropy, reduction="none"))(embeddings, targets)
    (grad,) = torch.autograd.grad(per_view.mean(), embeddings)
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
