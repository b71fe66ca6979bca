"""DINO on two processes (gloo, CPU) against one process on the whole batch: the loss, the centre, the teacher.

What is compared, for ``W = 2`` ranks holding half of every global batch each:

* on fixed logits: rank ``r``'s loss is the one-process loss of its images (so the mean of the ranks' losses is
  the one-process loss: every image weighs the same), and the centre every rank computes is the one-process
  centre of the global batch (the teacher outputs of both ranks gathered), identical on both ranks;
* a few training steps of the task itself (pseudo-labels from the global batch's draws, ``forward`` through
  DistributedDataParallel, SGD, ``after_step``): the student, the teacher and the centre end where one process
  on the global batch ends. The networks run in evaluation mode there, so batch norm uses its running statistics
  and every image is computed on its own, as the comparison needs (``--sync-bn`` does it for training mode; the
  slow test runs the real ``torchrun`` command with it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sslx_dino import plugin
from sslx_dino.loss import dino_loss, updated_centre
from sslx_dino.task import DINOTask
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl_engine.api import BatchRandom, is_distributed
from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.testing import TaskStep, assert_tensors_close, prepare, rank_rows, spawn_ranks

WORLD = 2
IMAGES_PER_RANK = 3
VIEWS, K = 4, 10
STUDENT_TEMPERATURE, TEACHER_TEMPERATURE, CENTRE_MOMENTUM = 0.2, 0.05, 0.7  # not the defaults: carried through


def fixed_logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student ``(W * B, V, K)`` and teacher ``(W * B, 2, K)`` logits of the global batch, and a centre."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(WORLD * IMAGES_PER_RANK, VIEWS, K, generator=generator)
    teacher = torch.randn(WORLD * IMAGES_PER_RANK, 2, K, generator=generator)
    return student, teacher, torch.randn(1, K, generator=generator)


# --- a few real steps of the task -----------------------------------------------------------------------------------
STEPS = 3
GLOBAL_BATCH = 4
SETTINGS = {"global_size": 16, "local_size": 8, "local_crops": 2, "out_dim": 32, "momentum": 0.9,
            "freeze_last_layer": 1, "teacher_temperature_warmup": 2}  # fmt: skip


def train_steps(rank: int, world: int) -> dict[str, torch.Tensor]:
    """``STEPS`` steps of the task on this rank's share of every global batch; its final state and losses."""
    subject = prepare(DINOTask, plugin=plugin, batch=GLOBAL_BATCH, image_size=16, settings=SETTINGS)
    model, runtime = subject.build(seed=0)
    task = runtime.task
    assert isinstance(task, DINOTask)
    model.eval()
    step = TaskStep(task, model.backbone, runtime.modules)
    wrapped: nn.Module = DistributedDataParallel(step) if world > 1 else step
    optimizer = torch.optim.SGD([p for p in step.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    local = GLOBAL_BATCH // world
    images = subject.images[rank * local : (rank + 1) * local]
    task.context.clock.total = STEPS
    losses = []
    for index in range(STEPS):
        task.context.clock.step = index
        random = BatchRandom(0, index, "dino", local, global_batch=GLOBAL_BATCH, offset=rank * local)
        batch = task.pseudo_labels(images, random)
        output = wrapped(batch)
        optimizer.zero_grad()
        output.losses["dino"].backward()
        optimizer.step()
        with torch.no_grad():
            task.after_step(model.backbone, runtime.modules, runtime.aux, batch, output)
        losses.append(output.losses["dino"].detach())
    state = {key: value.detach().clone() for key, value in model.state_tensors().items()}
    return state | {"losses": torch.stack(losses)}


def rank_result(rank: int) -> dict[str, object]:
    student, teacher, centre = fixed_logits()
    rows = rank_rows(rank, IMAGES_PER_RANK)
    mine = student[rows].clone().requires_grad_()
    loss, _ = dino_loss(mine, teacher[rows], centre, STUDENT_TEMPERATURE, TEACHER_TEMPERATURE)
    loss.backward()
    new_centre = updated_centre(centre, teacher[rows].flatten(0, 1), CENTRE_MOMENTUM)
    result = {"loss": loss.detach(), "grad": mine.grad, "centre": new_centre, "distributed": is_distributed()}
    return result | {"training": train_steps(rank, WORLD)}


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_result, tmp_path, world=WORLD, deadline_s=600.0)
    student, teacher, centre = fixed_logits()
    student.requires_grad_()
    whole, _ = dino_loss(student, teacher, centre, STUDENT_TEMPERATURE, TEACHER_TEMPERATURE)
    (grad,) = torch.autograd.grad(whole, student)
    expected_centre = updated_centre(centre, teacher.flatten(0, 1), CENTRE_MOMENTUM)
    for rank, result in enumerate(ranks):
        rows = rank_rows(rank, IMAGES_PER_RANK)
        assert result["distributed"]
        alone, _ = dino_loss(student[rows], teacher[rows], centre, STUDENT_TEMPERATURE, TEACHER_TEMPERATURE)
        torch.testing.assert_close(result["loss"], alone.detach(), atol=1e-6, rtol=1e-5)
        # DDP averages parameter gradients over the W ranks: each rank's gradient / W is the whole batch's.
        torch.testing.assert_close(result["grad"] / WORLD, grad[rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(result["centre"], expected_centre, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, whole.detach(), atol=1e-6, rtol=1e-5)
    local_only = updated_centre(centre, teacher[:IMAGES_PER_RANK].flatten(0, 1), CENTRE_MOMENTUM)
    assert not torch.allclose(local_only, expected_centre)  # the comparison would catch a centre of one rank

    single = train_steps(0, 1)
    mean_losses = sum(result["training"]["losses"] for result in ranks) / WORLD  # (STEPS,)
    torch.testing.assert_close(mean_losses, single["losses"], atol=1e-5, rtol=1e-4)
    for result in ranks:
        assert_tensors_close({**result["training"], "losses": single["losses"]}, single, atol=1e-5, rtol=1e-4)
    centre_key = "task/dino/centre"
    assert single[centre_key].abs().sum() > 0 and torch.equal(
        ranks[0]["training"][centre_key], ranks[1]["training"][centre_key]
    )
    assert any(key.startswith("task/dino/teacher.") for key in single)


# --- the real command under torchrun ----------------------------------------------------------------------------------
def write_folder(root: Path, count: int = 16, size: int = 16) -> Path:
    """An image folder of two classes of random-coloured squares."""
    generator = np.random.default_rng(0)
    for index in range(count):
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def pretrain(folder: Path, out: Path, processes: int) -> None:
    launcher = [sys.executable, "-m", "ssl_engine.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                    "-m", "ssl_engine.cli"]  # fmt: skip
    settings = [word for key, value in SETTINGS.items() for word in ("--set", f"dino.{key}={value}")]
    command = [*launcher, "pretrain", "--task", "dino", "--data", str(folder), "--image-size", "16",
               "--batch-size", str(8 // processes), "--steps", "3", "--workers", "0", "--no-probe", "--device", "cpu",
               "--sync-bn", "--out", str(out), *settings]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_with_sync_bn_trains_what_one_process_trains_teacher_and_centre_included(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data")
    pretrain(folder, tmp_path / "one", 1)
    pretrain(folder, tmp_path / "two", 2)
    [one, two] = (read_checkpoint(checkpoint_paths(tmp_path / run)[-1]).tensors for run in ("one", "two"))
    compared = [key for key in one if key.startswith(("model/", "task/"))]
    assert "task/dino/centre" in compared and any(key.startswith("task/dino/teacher.") for key in compared)
    for key in compared:
        if one[key].is_floating_point():
            torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=1e-3, msg=key)
