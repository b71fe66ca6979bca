"""Behaviour of the inpainting task: the masks, the filled inputs, the hole-only loss, the adversarial branch in
the engine's real training step, and real CLI runs (plain, adversarial, resumed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sslx_inpainting.plugin
import torch
from sslx_inpainting.masks import REGION_GRID, block_masks, center_masks, region_masks
from sslx_inpainting.task import InpaintingTask
from torch import Tensor, nn
from torch.nn import functional as F

from ssl_engine.api import (
    MEAN,
    SettingError,
    denormalize,
    discriminator_loss,
    generator_loss,
    masked_psnr,
    normalize,
)
from ssl_engine.testing import (
    KIT_DATA,
    assert_resumes_exactly,
    checkpoint_keys,
    cli_plugins,
    prepare,
    pretrain_cli,
    run_checkpoint,
    task_instance,
)
from ssl_engine.testing import pretext_batch as draw

torch.set_num_threads(2)


# --- masks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "side", "start"), [(32, 16, 8), (20, 10, 5), (33, 16, 8)])
def test_center_mask_is_the_central_square_of_half_the_side(size: int, side: int, start: int) -> None:
    masks = center_masks(3, size, 0.25)
    assert masks.shape == (3, 1, size, size) and masks.dtype == torch.bool
    expected = torch.zeros(size, size, dtype=torch.bool)
    for y in range(size):
        for x in range(size):
            expected[y, x] = start <= y < start + side and start <= x < start + side
    assert all(torch.equal(mask[0], expected) for mask in masks)
    assert int(masks[0].sum()) == side * side  # a quarter of the area when the side halves exactly


def test_block_masks_match_a_loop_reference() -> None:
    size, side = 24, 7
    corners = torch.randint(0, size - side + 1, (5, 3, 2), generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(5, 1, size, size, dtype=torch.bool)
    for b in range(5):
        for k in range(3):
            top, left = int(corners[b, k, 0]), int(corners[b, k, 1])
            for y in range(top, top + side):
                for x in range(left, left + side):
                    expected[b, 0, y, x] = True
    assert torch.equal(block_masks(size, corners, side), expected)


def test_random_blocks_cover_at_most_the_fraction_and_vary() -> None:
    task = task_instance(
        InpaintingTask, 32, mask="random_blocks", blocks=4
    )  # 4 squares of 8 px: at most 256 px = a quarter
    batch = draw(task, torch.rand(64, 3, 32, 32))
    area = batch.extras["mask"].sum(dim=(1, 2, 3))
    assert area.max() <= 256 and area.min() >= 64  # overlaps can only shrink the union, down to one block
    assert (area == 256).any() and (area < 256).any()
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in batch.extras["mask"]}) == 64


def test_region_masks_are_the_top_of_the_noise_field_with_exact_area() -> None:
    size = 32
    noise = torch.rand(16, REGION_GRID, REGION_GRID, generator=torch.Generator().manual_seed(1))
    masks = region_masks(noise, size, 0.25)
    assert masks.shape == (16, 1, size, size)
    assert (masks.sum(dim=(1, 2, 3)) == 256).all()
    field = F.interpolate(noise[:, None], size=(size, size), mode="bicubic", align_corners=False)
    for b in range(16):
        inside, outside = field[b][masks[b]], field[b][~masks[b]]
        assert inside.min() >= outside.max()  # every removed pixel ranks above every kept one
    # Irregular: for most images the hole fills well under its bounding box (a square would fill all of it).
    fill_of_box = []
    for mask in masks[:, 0]:
        rows, columns = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        box = (int(rows.max() - rows.min()) + 1) * (int(columns.max() - columns.min()) + 1)
        fill_of_box.append(int(mask.sum()) / box)
    assert sorted(fill_of_box)[8] < 0.8


def test_region_masks_from_the_task_are_per_sample_and_seeded() -> None:
    task = task_instance(InpaintingTask, 32, mask="random_region")
    images = torch.rand(8, 3, 32, 32)
    first, again, other = draw(task, images), draw(task, images), draw(task, images, step=1)
    assert torch.equal(first.extras["mask"], again.extras["mask"])
    assert not torch.equal(first.extras["mask"], other.extras["mask"])
    assert not torch.equal(first.extras["mask"][0], first.extras["mask"][1])
    assert (first.extras["mask"].sum(dim=(1, 2, 3)) == 256).all()


# --- inputs and targets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["center", "random_blocks", "random_region"])
def test_the_hole_holds_the_mean_and_the_rest_is_the_normalised_image(mask: str) -> None:
    images = torch.rand(6, 3, 32, 32)
    batch = draw(task_instance(InpaintingTask, 32, mask=mask), images)
    hole = batch.extras["mask"].expand(-1, 3, -1, -1)
    assert batch.inputs.shape == batch.targets.shape == (6, 3, 32, 32) and batch.views == 1
    torch.testing.assert_close(batch.targets, normalize(images))
    torch.testing.assert_close(batch.inputs[~hole], normalize(images)[~hole])
    assert (batch.inputs[hole] == 0).all()
    # 0 in the normalised space is the mean colour of the fixed statistics every image is standardised with.
    filled = denormalize(batch.inputs).permute(0, 2, 3, 1)[batch.extras["mask"][:, 0]]  # (holes, 3)
    torch.testing.assert_close(filled, torch.tensor(MEAN).expand_as(filled))


# --- the loss ----------------------------------------------------------------------------------------------
def decoded_by(task: InpaintingTask, backbone: nn.Module, modules: nn.ModuleDict, batch):  # type: ignore[no-untyped-def]
    """Run forward, keeping the decoder's output (with its gradient)."""
    kept: list[Tensor] = []

    def keep(module: nn.Module, args: object, output: Tensor) -> None:
        output.retain_grad()
        kept.append(output)

    handle = modules["decoder"].register_forward_hook(keep)
    output = task.forward(backbone, modules, nn.ModuleDict(), batch)  # type: ignore[arg-type]
    handle.remove()
    return output, kept[0]


@pytest.mark.parametrize("mask", ["center", "random_region"])
def test_reconstruction_is_the_l2_on_the_hole_only(mask: str) -> None:
    task = task_instance(InpaintingTask, 32, mask=mask)
    backbone, modules = task.context.make_backbone(3), task.build_modules()
    batch = draw(task, torch.rand(4, 3, 32, 32))
    output, decoded = decoded_by(task, backbone, modules, batch)
    assert set(output.losses) == {"reconstruction"}
    total, count = 0.0, 0
    for b, c, y, x in batch.extras["mask"].expand(-1, 3, -1, -1).nonzero().tolist():
        total += float(decoded[b, c, y, x].detach() - batch.targets[b, c, y, x]) ** 2
        count += 1
    assert math.isclose(float(output.losses["reconstruction"].detach()), total / count, rel_tol=1e-4)
    output.losses["reconstruction"].backward()
    hole = batch.extras["mask"].expand(-1, 3, -1, -1)
    assert (decoded.grad[~hole] == 0).all()  # type: ignore[index]
    assert (decoded.grad[hole] != 0).float().mean() > 0.99  # type: ignore[index]


def test_context_weight_adds_the_visible_pixels() -> None:
    task = task_instance(InpaintingTask, 32, context_weight=0.5)
    backbone, modules = task.context.make_backbone(3), task.build_modules()
    batch = draw(task, torch.rand(4, 3, 32, 32))
    output, decoded = decoded_by(task, backbone, modules, batch)
    hole = batch.extras["mask"].expand(-1, 3, -1, -1)
    squared = (decoded - batch.targets).square()
    expected = squared[hole].mean() + 0.5 * squared[~hole].mean()
    torch.testing.assert_close(output.losses["reconstruction"], expected)


def test_filled_images_keep_the_context_and_psnr_matches_a_reference() -> None:
    task = task_instance(InpaintingTask, 32)
    backbone, modules = task.context.make_backbone(3), task.build_modules()
    images = torch.rand(4, 3, 32, 32)
    batch = draw(task, images)
    output, decoded = decoded_by(task, backbone, modules, batch)
    hole = batch.extras["mask"].expand(-1, 3, -1, -1)
    filled = output.predictions
    assert filled is not None
    torch.testing.assert_close(filled[~hole], batch.inputs[~hole])
    torch.testing.assert_close(filled[hole], decoded[hole])
    expected = []
    for b in range(4):
        pixels = batch.extras["mask"][b, 0]
        error = (denormalize(filled)[b].clamp(0, 1) - images[b])[:, pixels].square().mean()
        expected.append(10 * math.log10(1 / float(error.detach())))
    assert math.isclose(float(output.metrics["psnr"]), sum(expected) / 4, rel_tol=1e-4)
    # The mean fill, scored the same way: the baseline the metric beside it shows.
    mean_fill = torch.tensor(MEAN).view(1, 3, 1, 1).expand(4, 3, 32, 32)
    torch.testing.assert_close(output.metrics["mean_fill_psnr"], masked_psnr(mean_fill, images, batch.extras["mask"]))


def test_loss_weights_and_settings_are_validated() -> None:
    task = task_instance(InpaintingTask, 32, reconstruction_weight=0.9, adversarial_weight=0.1)
    assert task.loss_weights == {"reconstruction": 0.9, "adversarial": 0.1}
    assert task_instance(InpaintingTask, 32).loss_weights == {"reconstruction": 0.999, "adversarial": 0.001}
    with pytest.raises(SettingError, match="mask"):
        task_instance(InpaintingTask, 32, mask="circle")
    with pytest.raises(SettingError, match="hole_fraction"):
        task_instance(InpaintingTask, 32, hole_fraction=0.9)


# --- the adversarial branch --------------------------------------------------------------------------------
def test_without_the_adversarial_setting_there_is_no_discriminator() -> None:
    task = task_instance(InpaintingTask, 32)
    assert len(task.build_aux_modules()) == 0
    backbone, modules = task.context.make_backbone(3), task.build_modules()
    batch = draw(task, torch.rand(2, 3, 32, 32))
    output = task.forward(backbone, modules, nn.ModuleDict(), batch)
    assert "adversarial" not in output.losses
    assert task.aux_losses(nn.ModuleDict(), batch, output) == {}


def test_adversarial_terms_match_the_paper_and_only_the_discriminator_sees_detached_fakes() -> None:
    task = task_instance(InpaintingTask, 32, adversarial=True)
    backbone, modules, aux = task.context.make_backbone(3), task.build_modules(), task.build_aux_modules()
    aux.eval()  # spectral norm's power iteration stays put, so re-evaluating the discriminator gives the same logits
    batch = draw(task, torch.rand(4, 3, 32, 32))
    output = task.forward(backbone, modules, aux, batch)
    assert output.predictions is not None
    fake_logits = aux["discriminator"](output.predictions)
    torch.testing.assert_close(output.losses["adversarial"], -F.logsigmoid(fake_logits).mean())
    output.losses["adversarial"].backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in modules.parameters() if p.grad is not None)
    for parameter in [*modules.parameters(), *backbone.parameters(), *aux.parameters()]:
        parameter.grad = None
    [term] = task.aux_losses(aux, batch, output).values()
    real_logits = aux["discriminator"](batch.targets)
    expected = -F.logsigmoid(real_logits).mean() - F.logsigmoid(-aux["discriminator"](output.predictions)).mean()
    torch.testing.assert_close(term, expected)
    torch.testing.assert_close(discriminator_loss(real_logits, fake_logits), expected)
    torch.testing.assert_close(generator_loss(fake_logits), output.losses["adversarial"])
    term.backward()
    assert all(p.grad is None for p in [*modules.parameters(), *backbone.parameters()])  # fakes were detached
    assert all(p.grad is not None for p in aux.parameters())


def test_a_training_step_updates_the_discriminator_and_weights_the_adversarial_term(tmp_path: Path) -> None:
    adversarial = prepare(InpaintingTask, settings={"adversarial": True}, plugin=sslx_inpainting.plugin)
    trainer = adversarial.trainer(tmp_path / "r")  # the engine's trainer on the kit's 32 images
    discriminator = trainer.model.aux_modules["inpainting"]["discriminator"]
    assert "inpainting" in trainer.aux_optimizers
    before = {name: p.detach().clone() for name, p in discriminator.named_parameters()}
    images, _ = next(iter(trainer.stream.batches(0)))
    logged = trainer.train_step(images)
    after = dict(discriminator.named_parameters())
    assert all(not torch.equal(before[name], after[name]) for name in before)
    assert {"inpainting/reconstruction", "inpainting/adversarial", "inpainting/discriminator"} <= set(logged)
    expected = 0.999 * logged["inpainting/reconstruction"] + 0.001 * logged["inpainting/adversarial"]
    assert math.isclose(logged["inpainting/loss"], expected, rel_tol=1e-5)
    assert logged["inpainting/adversarial"] > 0


def test_without_adversarial_there_is_no_aux_optimizer_term_or_checkpointed_state(tmp_path: Path) -> None:
    trainer = prepare(InpaintingTask, plugin=sslx_inpainting.plugin).trainer(tmp_path / "r")
    assert len(trainer.model.aux_modules["inpainting"]) == 0 and trainer.aux_optimizers == {}
    images, _ = next(iter(trainer.stream.batches(0)))
    logged = trainer.train_step(images)
    assert "inpainting/adversarial" not in logged and "inpainting/discriminator" not in logged
    keys = checkpoint_keys(trainer.save_checkpoint())
    assert any(key.startswith("task/inpainting/decoder.") for key in keys)
    assert not any(key.startswith(("aux/", "optim/aux/")) for key in keys)


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_adversarial_run_logs_both_terms_and_resumes_with_the_discriminator(tmp_path: Path) -> None:
    common = ["--set", "inpainting.adversarial=true", "--data", KIT_DATA, "--log-every", 1, "--image-size", 16]
    with cli_plugins(("inpainting", sslx_inpainting.plugin)):
        run = pretrain_cli(tmp_path, "inpainting", *common, "--steps", 2, "--checkpoint-every", 1)
        saved = run_checkpoint(run, 2)
        assert any(key.startswith("task/inpainting/decoder.") for key in saved.tensors)
        assert any(key.startswith("aux/inpainting/discriminator.") for key in saved.tensors)
        assert any(key.startswith("optim/aux/inpainting/") for key in saved.tensors)
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [line["step"] for line in lines] == [1, 2]
        assert all({"inpainting/adversarial", "inpainting/discriminator"} <= set(line) for line in lines)
        # The discriminator moved between the two checkpoints: it is trained, not just carried.
        earlier = run_checkpoint(run, 1).module_state("aux/inpainting")
        assert any(not torch.equal(earlier[key], value) for key, value in saved.module_state("aux/inpainting").items())

        # What a resumed run starts from: the saved discriminator and its optimizer state, exactly.
        resumed = assert_resumes_exactly(run)
        assert resumed.aux_optimizers["inpainting"].state_dict()["state"], "the discriminator's optimizer has no state"
        pretrain_cli(tmp_path, "inpainting", *common, "--steps", 3, "--resume")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert run_checkpoint(run).step == 3
