"""Barlow Twins on two processes (gloo, CPU) against one process on the whole batch.

What is compared, for ``W = 2`` ranks with ``B`` images each and the ``W * B``-image batch in one process:

* the loss on fixed embeddings: each rank gathers the global batch, so its terms are the one-process terms, and
  after ``loss.backward()`` on every rank, each rank's gradient on its own rows, divided by ``W``, is the
  one-process gradient on those rows (the gather's backward sums what all ``W`` identical losses send back,
  and DistributedDataParallel divides parameter gradients by ``W``);
* a whole training step of the task: pseudo-labels of each rank's slice of the global batch, the backbone and the
  projector in DistributedDataParallel with their batch norms over the global batch (``--sync-bn``: the
  paper's code converts them to SyncBatchNorm), the task's forward, backward and one SGD step. Loss terms,
  metrics, averaged gradients and the parameters after the step equal those of one process on the whole batch.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sslx_barlowtwins.loss import BarlowTwinsLoss
from sslx_barlowtwins.task import BarlowTwinsTask
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from ssl_engine.api import BatchRandom, PretextBatch, TaskContext, gather_from_all_ranks, projector_head
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.settings import resolve_settings
from ssl_engine.train.sync_batchnorm import convert_to_global_batchnorm

WORLD = 2
IMAGES_PER_RANK = 4
DIM = 6
LAMBDA = 0.05  # not the default, so the setting is carried through
SEED, STEP = 3, 11

pytestmark = pytest.mark.slow


def fixed_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(WORLD * IMAGES_PER_RANK, DIM, generator=generator)
    return z_a, z_a + 0.7 * torch.randn(WORLD * IMAGES_PER_RANK, DIM, generator=generator)


def fixed_images() -> torch.Tensor:
    return torch.rand(WORLD * IMAGES_PER_RANK, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def make_task() -> BarlowTwinsTask:
    settings = resolve_settings("barlowtwins", BarlowTwinsTask.settings, {"lambda": LAMBDA, "projector_dim": 8})
    return BarlowTwinsTask(
        TaskContext(
            settings=settings,
            image_size=32,
            in_channels=3,
            feature_dim=32,
            feature_stride=8,
            make_head=projector_head,
            loss_fn=F.cross_entropy,
            make_backbone=lambda channels: SmallConvNet(channels, width=4),
        )
    )


class TrainingStep(nn.Module):
    """The shared backbone and the task's modules, one step of the task (what the trainer wraps in DDP)."""

    def __init__(self, task: BarlowTwinsTask) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.task = task
        self.backbone = SmallConvNet(3, width=4)
        self.heads = task.build_modules()

    def forward(self, batch: PretextBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        output = self.task.forward(self.backbone, self.heads, nn.ModuleDict(), batch)  # type: ignore[arg-type]
        terms = {**output.losses, **output.metrics}
        assert output.predictions is not None
        return self.task.weighted_total(output.losses), terms, output.predictions


def train_one_step(model: nn.Module, batch: PretextBatch) -> dict[str, object]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss, terms, predictions = model(batch)
    loss.backward()
    grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    optimizer.step()
    return {
        "loss": loss.detach(),
        "terms": {name: value.detach() for name, value in terms.items()},
        "predictions": predictions.detach(),
        "grads": grads,
        "parameters": {name: parameter.detach().clone() for name, parameter in model.named_parameters()},
    }


def without_ddp_prefix(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("module."): value for name, value in values.items()}


def run_rank(rank: int, port: int, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        torch.set_num_threads(1)
        rows = slice(rank * IMAGES_PER_RANK, (rank + 1) * IMAGES_PER_RANK)
        z_a, z_b = (z[rows].clone().requires_grad_() for z in fixed_embeddings())
        invariance, redundancy, _ = BarlowTwinsLoss()(gather_from_all_ranks(z_a), gather_from_all_ranks(z_b))
        (invariance + LAMBDA * redundancy).backward()

        task = make_task()
        random = BatchRandom(SEED, STEP, task.name, IMAGES_PER_RANK, global_batch=WORLD * IMAGES_PER_RANK,
                             offset=rank * IMAGES_PER_RANK)  # fmt: skip
        batch = task.pseudo_labels(fixed_images()[rows], random)
        model = DistributedDataParallel(convert_to_global_batchnorm(TrainingStep(task), "cpu"))
        step = train_one_step(model, batch)
        torch.save(
            {
                "terms": (invariance.detach(), redundancy.detach()),
                "grads": (z_a.grad, z_b.grad),
                "batch": batch.inputs,
                "step": step,
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
    out: Path, deadline_s: float = 300.0, target: Callable[[int, int, Path], None] = run_rank
) -> list[dict]:
    context = mp.spawn(target, args=(free_port(), out), nprocs=WORLD, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {WORLD} ranks did not finish in {deadline_s:.0f} s")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def test_two_processes_train_as_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(tmp_path)

    # The loss on fixed embeddings.
    z_a, z_b = (z.requires_grad_() for z in fixed_embeddings())
    invariance, redundancy, _ = BarlowTwinsLoss()(z_a, z_b)
    grads = torch.autograd.grad(invariance + LAMBDA * redundancy, (z_a, z_b))
    for rank, result in enumerate(ranks):
        rows = slice(rank * IMAGES_PER_RANK, (rank + 1) * IMAGES_PER_RANK)
        torch.testing.assert_close(result["terms"][0], invariance.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["terms"][1], redundancy.detach(), atol=1e-5, rtol=1e-5)
        for got, expected in zip(result["grads"], grads, strict=True):
            torch.testing.assert_close(got / WORLD, expected[rows], atol=1e-5, rtol=1e-5)

    # A whole step of the task.
    task = make_task()
    batch = task.pseudo_labels(fixed_images(), BatchRandom(SEED, STEP, task.name, WORLD * IMAGES_PER_RANK))
    whole = train_one_step(TrainingStep(task), batch)
    views_per_rank = 2 * IMAGES_PER_RANK
    for rank, result in enumerate(ranks):
        views = slice(rank * views_per_rank, (rank + 1) * views_per_rank)
        torch.testing.assert_close(result["batch"], batch.inputs[views])  # each rank's slice of the same views
        step = result["step"]
        torch.testing.assert_close(step["loss"], whole["loss"], atol=1e-5, rtol=1e-5)
        for name in ("invariance", "redundancy", "on_diagonal", "off_diagonal"):
            torch.testing.assert_close(step["terms"][name], whole["terms"][name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step["predictions"], whole["predictions"][views], atol=1e-5, rtol=1e-5)
        for what in ("grads", "parameters"):
            got = without_ddp_prefix(step[what])
            assert got.keys() == whole[what].keys()
            for name, value in whole[what].items():
                # float32 sums in another order (batch norm over two processes): 1e-5 of the tensor's scale,
                # 5e-5 for gradients. A bias just before batch norm has a true gradient of zero, so what is
                # compared there is the rounding of two sums of ~1-sized terms (seen: 1.2e-5).
                scale = max(1.0, float(value.abs().max()))
                tolerance = (5e-5 if what == "grads" else 1e-5) * scale
                detail = f"{what} {name}"
                torch.testing.assert_close(
                    got[name], value, atol=tolerance, rtol=1e-5, msg=lambda m, d=detail: f"{d}: {m}"
                )
    # The monitor over the global batch: the mean of the ranks' accuracies is the one-process accuracy.
    mean_accuracy = sum(result["step"]["terms"]["accuracy"] for result in ranks) / WORLD
    torch.testing.assert_close(mean_accuracy, whole["terms"]["accuracy"])
