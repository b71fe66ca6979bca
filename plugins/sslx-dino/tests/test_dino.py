"""Behaviour of the DINO task: the loss against Algorithm 1, the head, multi-crop views, the teacher's momentum and
the centre against their formulas over real training steps, the checkpoint layout, resuming, bad settings,
``sslx show`` and a mixed run on the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sslx_dino import plugin
from sslx_dino.head import DINOHead, dino_projector
from sslx_dino.loss import dino_loss, teacher_temperature, updated_centre
from sslx_dino.task import DINOTask
from torch import nn
from torch.nn import functional as F

from ssl_engine.api import BatchRandom, TaskOutput
from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.cli import main as sslx
from ssl_engine.run import build_run
from ssl_engine.run_directory import write_config
from ssl_engine.testing import check_pretext_task, prepare
from ssl_engine.train.loop import Trainer


# --- the loss against the paper's pseudo-code -------------------------------------------------------------------
def reference_dino_loss(
    student: torch.Tensor, teacher: torch.Tensor, centre: torch.Tensor, tps: float, tpt: float
) -> torch.Tensor:
    """Algorithm 1 of Caron et al. 2021 with plain loops, generalised to multi-crop as the authors' code does.

    ``H(t, s) = -(softmax((t - C) / tpt) * log softmax(s / tps)).sum()`` for one image's teacher output on global
    view ``g`` and student output on view ``v``; the loss is the mean over images of each pair's ``H``, then the
    mean over the pairs with ``v != g`` (two views: ``H(t1, s2) / 2 + H(t2, s1) / 2``).
    """
    images, views, _ = student.shape
    pairs = []
    for g in range(teacher.shape[1]):
        for v in range(views):
            if v == g:
                continue
            per_image = []
            for b in range(images):
                t = torch.softmax((teacher[b, g].detach() - centre) / tpt, dim=0)
                s = torch.softmax(student[b, v] / tps, dim=0)
                per_image.append(-(t * torch.log(s)).sum())
            pairs.append(torch.stack(per_image).mean())
    return torch.stack(pairs).mean()


@pytest.mark.parametrize(("views", "tps", "tpt"), [(2, 0.1, 0.04), (6, 0.1, 0.07), (4, 0.3, 0.05)])
def test_loss_matches_algorithm_1_with_gradients(views: int, tps: float, tpt: float) -> None:
    generator = torch.Generator().manual_seed(views)
    student = torch.randn(5, views, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 2, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    centre = 0.3 * torch.randn(1, 16, generator=generator, dtype=torch.float64)
    ours, targets = dino_loss(student.float(), teacher.float(), centre.float(), tps, tpt)
    reference = reference_dino_loss(student, teacher, centre[0], tps, tpt)
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-5)
    (ours_grad,) = torch.autograd.grad(ours, student)
    (reference_grad,) = torch.autograd.grad(reference, student)
    torch.testing.assert_close(ours_grad.double(), reference_grad, atol=1e-5, rtol=1e-5)
    assert teacher.grad is None  # no gradient through the teacher
    expected = torch.softmax((teacher.detach() - centre) / tpt, dim=-1).float()
    torch.testing.assert_close(targets, expected)


def test_loss_is_float32_under_autocast_and_refuses_bad_temperatures() -> None:
    student, teacher = torch.randn(3, 4, 8), torch.randn(3, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, targets = dino_loss(student.bfloat16(), teacher.bfloat16(), torch.zeros(1, 8), 0.1, 0.04)
    assert loss.dtype == targets.dtype == torch.float32
    for temperatures in ((0.0, 0.04), (0.1, -1.0)):
        with pytest.raises(ValueError, match="positive"):
            dino_loss(student, teacher, torch.zeros(8), *temperatures)


def test_teacher_temperature_warms_up_linearly_in_steps() -> None:
    assert teacher_temperature(0, 0.04, 0.07, 30) == 0.04
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(500, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


def test_centre_follows_its_formula_outside_torchrun() -> None:
    centre, teacher = torch.randn(1, 8), torch.randn(6, 8)
    expected = 0.9 * centre + 0.1 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(updated_centre(centre, teacher, 0.9), expected)


# --- the head -----------------------------------------------------------------------------------------------------
def test_head_is_an_mlp_then_cosines_to_unit_prototypes() -> None:
    torch.manual_seed(0)
    projector = dino_projector(32, 16)
    assert [type(m) for m in projector] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert projector[0].out_features == 512
    head = DINOHead(projector, 16, 64)
    features = torch.randn(10, 32)
    logits = head(features)
    assert logits.shape == (10, 64) and logits.abs().max() <= 1 + 1e-6
    bottleneck = F.normalize(projector(features), dim=1)
    torch.testing.assert_close(logits, bottleneck @ F.normalize(head.last_layer.weight, dim=1).T)
    assert head.gain is None and not any("gain" in name for name, _ in head.named_parameters())
    learned = DINOHead(dino_projector(32, 16), 16, 64, norm_last_layer=False)
    assert learned.gain is not None and learned.gain.shape == (64, 1) and bool((learned.gain == 1).all())


def test_freezing_the_last_layer_gives_it_a_zero_gradient_only() -> None:
    torch.manual_seed(0)
    head = DINOHead(dino_projector(32, 16), 16, 64, norm_last_layer=False)
    features = torch.randn(10, 32)
    torch.testing.assert_close(head(features, True), head(features))
    head(features, True).logsumexp(1).mean().backward()
    assert head.last_layer.weight.grad is not None and not head.last_layer.weight.grad.any()
    assert head.gain is not None and head.gain.grad is not None and not head.gain.grad.any()
    assert head.projector[0].weight.grad is not None and head.projector[0].weight.grad.any()


# --- views --------------------------------------------------------------------------------------------------------
def make_task(head: str | None = None, **settings: Any) -> tuple[DINOTask, Any, nn.Module]:
    model, runtime = prepare(DINOTask, plugin=plugin, settings=settings, head=head).build()
    assert isinstance(runtime.task, DINOTask)
    return runtime.task, runtime, model


def images(count: int = 4, size: int = 32) -> torch.Tensor:
    return prepare(DINOTask, plugin=plugin, batch=count, image_size=size).images


def test_global_and_local_views_at_their_sizes_batched_per_resolution() -> None:
    assert make_task()[0].local_crops == 0  # the default at 32 px: see the task's notes
    task, _, _ = make_task(local_crops=4)
    batch = task.pseudo_labels(images(), BatchRandom(0, 3, "dino", 4))
    assert batch.views == 6
    assert batch.inputs.shape == (8, 3, 32, 32)
    [locals_] = batch.crops
    assert locals_.shape == (16, 3, 16, 16)
    assert torch.equal(batch.targets, torch.arange(4))
    assert batch.extras["global_boxes"].shape == (4, 2, 4) and batch.extras["local_boxes"].shape == (4, 4, 4)
    areas = batch.extras["global_boxes"][..., 2:].prod(-1) / 32**2
    assert bool((areas >= 0.4 - 0.05).all())  # integer boxes round the area a little
    assert bool((batch.extras["local_boxes"][..., 2:].prod(-1) / 32**2 <= 0.4 + 0.05).all())
    assert not batch.extras["global_solarized"][:, 0].any()  # only the second global view is ever solarized

    task, _, _ = make_task(local_crops=0, global_size=24, local_size=12)
    batch = task.pseudo_labels(images(), BatchRandom(0, 3, "dino", 4))
    assert batch.views == 2 and batch.crops == () and batch.inputs.shape == (8, 3, 24, 24)
    task, _, _ = make_task(local_crops=2, local_size=8, blur=True)
    batch = task.pseudo_labels(images(), BatchRandom(0, 3, "dino", 4))
    assert batch.crops[0].shape == (8, 3, 8, 8) and bool(batch.extras["global_blurred"][:, 0].all())


# --- the whole contract ---------------------------------------------------------------------------------------------
def test_the_task_keeps_the_whole_contract() -> None:
    check_pretext_task(DINOTask, plugin=plugin)  # the default: the two global views only
    check_pretext_task(DINOTask, plugin=plugin, settings={"local_crops": 4})  # multi-crop


def test_forward_with_the_papers_head_no_local_crops_and_a_mix_of_settings() -> None:
    task, runtime, model = make_task("dino", local_crops=0, norm_last_layer=False, representation="student")
    assert isinstance(runtime.modules["head"].projector[1], nn.GELU)  # the paper's projector, registered as `dino`
    batch = task.pseudo_labels(images(), BatchRandom(0, 0, "dino", 4))
    output = task.forward(model.backbone, runtime.modules, runtime.aux, batch)
    assert output.predictions is not None and output.predictions.shape == (8, 1024)
    assert output.extras["teacher"].shape == (8, 1024)
    output.losses["dino"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert task.representation(model.backbone, runtime.modules).backbone is model.backbone


def test_teacher_starts_as_the_student_and_is_the_representation() -> None:
    task, runtime, model = make_task()
    teacher = runtime.modules["teacher"]
    for ours, theirs in ((teacher["backbone"], model.backbone), (teacher["head"], runtime.modules["head"])):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in teacher.parameters())
    assert task.representation(model.backbone, runtime.modules).backbone is teacher["backbone"]


def test_forward_uses_the_scheduled_temperature_and_the_centre() -> None:
    task, runtime, model = make_task(teacher_temperature=0.07, teacher_temperature_warmup=10, local_crops=4)
    batch = task.pseudo_labels(images(), BatchRandom(0, 0, "dino", 4))
    centre = runtime.modules.get_buffer("centre")
    centre.copy_(torch.randn_like(centre))
    task.context.clock.step = 5
    model.eval()  # batch norm with running statistics: the same outputs on every call
    output = task.forward(model.backbone, runtime.modules, runtime.aux, batch)
    assert float(output.metrics["teacher_temperature"]) == pytest.approx(0.055)
    student = output.predictions.view(4, 6, -1)
    teacher = output.extras["teacher"].view(4, 2, -1)
    expected, _ = dino_loss(student, teacher, centre, 0.1, 0.055)
    torch.testing.assert_close(output.losses["dino"].detach(), expected)
    assert 0 <= float(output.metrics["teacher_entropy"]) <= math.log(1024) + 1e-4


# --- whole training steps -------------------------------------------------------------------------------------------
STEPS = 5


def test_teacher_and_centre_follow_their_formulas_over_the_schedule(tmp_path: Path) -> None:
    settings = {"momentum": 0.9, "centre_momentum": 0.8, "freeze_last_layer": 2, "local_crops": 4}
    trainer = prepare(DINOTask, plugin=plugin, settings=settings).trainer(tmp_path / "run", steps=STEPS)
    modules = trainer.model.task_modules["dino"]
    [runtime] = trainer.model.runtimes
    task = runtime.task
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in modules["teacher"].parameters())
    assert all(id(p) in trained for p in [*modules["head"].parameters(), *trainer.model.backbone.parameters()])
    outputs: list[TaskOutput] = []
    original = task.after_step

    def recording(backbone, modules, aux, batch, output) -> None:  # type: ignore[no-untyped-def]
        outputs.append(output)
        original(backbone, modules, aux, batch, output)

    task.after_step = recording  # type: ignore[method-assign]
    students = [trainer.model.backbone, modules["head"]]
    teachers = [modules["teacher"]["backbone"], modules["teacher"]["head"]]
    prototypes = modules["head"].last_layer.weight
    for images_, _ in trainer.stream.batches(0):
        if trainer.step == STEPS:
            break
        step = trainer.step
        before = [[p.detach().clone() for p in teacher.parameters()] for teacher in teachers]
        centre = modules.get_buffer("centre").clone()
        last_layer = prototypes.detach().clone()
        trainer.device_step(images_)
        m = 1 - (1 - 0.9) * (math.cos(math.pi * step / STEPS) + 1) / 2  # cosine from 0.9 to 1 (BYOL, DINO)
        for teacher, student, old in zip(teachers, students, before, strict=True):
            for now, trained_now, was in zip(teacher.parameters(), student.parameters(), old, strict=True):
                torch.testing.assert_close(now, m * was + (1 - m) * trained_now.detach(), atol=1e-6, rtol=1e-5)
        teacher_logits = outputs[-1].extras["teacher"]
        assert teacher_logits.shape == (2 * 8, 1024)
        expected_centre = 0.8 * centre + 0.2 * teacher_logits.float().mean(0, keepdim=True)
        torch.testing.assert_close(modules.get_buffer("centre"), expected_centre)
        # The prototypes keep their direction while frozen (weight decay only rescales them), then move.
        moved = not torch.allclose(F.normalize(prototypes.detach(), dim=1), F.normalize(last_layer, dim=1))
        assert moved == (step >= 2), step


def test_checkpoint_keeps_teacher_and_centre_under_task_dino_and_a_resume_continues_bit_for_bit(
    tmp_path: Path,
) -> None:
    settings = {"freeze_last_layer": 1, "teacher_temperature_warmup": 3, "local_crops": 4}
    subject = prepare(DINOTask, plugin=plugin, settings=settings)
    straight = subject.trainer(tmp_path / "straight", steps=4)
    straight.train()
    stopped = subject.trainer(tmp_path / "stopped", steps=4, checkpoint_every=1)
    write_config(stopped.out, stopped.config)
    for images_, _ in stopped.stream.batches(0):
        if stopped.step == 2:
            break
        stopped.device_step(images_)
    stopped.checkpoint()  # preempted after step 2 of 4
    saved = read_checkpoint(checkpoint_paths(tmp_path / "stopped")[-1]).tensors
    assert saved["task/dino/centre"].shape == (1, 1024) and saved["task/dino/centre"].abs().sum() > 0
    assert any(key.startswith("task/dino/teacher.backbone.") for key in saved)
    assert "task/dino/teacher.head.last_layer.weight" in saved and "task/dino/head.last_layer.weight" in saved
    # The teacher has moved from its start (the student's initial weights) and is not the student.
    assert not torch.equal(saved["task/dino/teacher.head.last_layer.weight"], saved["task/dino/head.last_layer.weight"])
    resumed = Trainer(build_run(stopped.config, stopped.run.registry, tmp_path / "stopped", resume=True))
    assert resumed.step == 2
    resumed.train()
    final = resumed.model.state_tensors()
    for key, value in straight.model.state_tensors().items():
        assert torch.equal(value, final[key]), key


# --- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("momentum=1.5", "dino.momentum must be <= 1.0"),
        ("momentum=-0.1", "dino.momentum must be >= 0.0"),
        ("centre_momentum=2", "dino.centre_momentum must be <= 1"),
        ("teacher_temperature=0", "dino.teacher_temperature must be >= 0.001"),
        ("student_temperature=-1", "dino.student_temperature must be >= 0.001"),
        ("warmup_teacher_temperature=0", "dino.warmup_teacher_temperature must be >= 0.001"),
        ("local_size=40", "local views of 40 px are larger than the global views of 32 px"),
        ("local_min_scale=0.5", "dino.local_min_scale=0.5 is above dino.local_max_scale=0.4"),
        ("global_max_scale=0.3", "local crops may cover more of the image"),
        ("local_crops=-1", "dino.local_crops must be >= 0"),
        ("global_size=4", "dino.global_size=4 px is below the 8 px"),
    ],
)
def test_bad_settings_exit_2_naming_the_task_before_training(tmp_path: Path, setting: str, says: str) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        sslx, ["pretrain", "--task", "dino", "--set", f"dino.{setting}", "--steps", "2", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert says in result.output and "dino" in result.output
    assert not list(out.glob("checkpoint-*"))


def test_the_drawing_shows_globals_and_locals_at_their_sizes() -> None:
    task, runtime, model = make_task(local_crops=4)
    originals = images(3)
    batch = task.pseudo_labels(originals, BatchRandom(0, 0, "dino", 3))
    picture = task.draw(originals, batch, None)
    # Magnified twice: image and 2 globals at 64 px, 4 locals at 32 px; three rows.
    cells = picture.info["cells"]
    assert len(cells) == 3 and all(len(row) == 1 + 2 + 4 for row in cells)
    sides = [(right - left, bottom - top) for left, top, right, bottom in cells[0]]
    assert sides == [(64, 64)] * 3 + [(32, 32)] * 4
    left, top, right, bottom = cells[0][3]  # the first local view
    pixels = np.asarray(picture)
    assert (pixels[top:bottom, left:right] != 255).any()  # a local view
    assert (pixels[bottom : top + 64, left:right] == 255).all()  # white below it, as tall as a global view
    with torch.no_grad():
        output = task.forward(model.backbone, runtime.modules, runtime.aux, batch)
    assert isinstance(task.draw(originals, batch, output), Image.Image)


def test_sslx_show_draws_the_task_and_its_local_views_when_asked(tmp_path: Path) -> None:
    sizes = []
    for words in ([], ["--set", "dino.local_crops=4"]):
        out = tmp_path / f"dino{len(words)}.png"
        result = CliRunner().invoke(sslx, ["show", "--task", "dino", "--count", "2", *words, "--out", str(out)])
        assert result.exit_code == 0, result.output
        with Image.open(out) as picture:
            sizes.append(picture.size)
    (width, height), (wider, _) = sizes
    assert height > 2 * 64 and width > 3 * 64  # two rows: the image and its two global views
    assert wider >= 3 * 64 + 4 * 32  # and four local views at half the size


@pytest.mark.slow
def test_a_mix_with_rotation_trains_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        sslx,
        [
            "pretrain",
            "--task",
            "dino",
            "--task",
            "rotation=0.5",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--no-probe",
            "--log-every",
            "1",
            "--out",
            str(out),
        ],  # fmt: skip
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and "dino/dino" in metrics[-1] and "rotation/rotation" in metrics[-1]
    keys = read_checkpoint(checkpoint_paths(out)[-1]).tensors
    assert "task/dino/centre" in keys and any(key.startswith("task/rotation/") for key in keys)
