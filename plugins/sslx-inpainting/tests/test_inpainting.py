"""Behaviour of the inpainting task: the masks, the filled inputs, the hole-only loss, the adversarial branch in
the engine's real training step, and real CLI runs (plain, adversarial, resumed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sslx_inpainting.plugin
import torch
from sslx_inpainting.masks import REGION_GRID, block_masks, center_masks, region_masks
from sslx_inpainting.task import InpaintingTask
from torch import Tensor, nn
from torch.nn import functional as F

from ssl_engine.api import MEAN, SettingError, denormalize, masked_psnr, normalize
from ssl_engine.testing import assert_adversarial_run_resumes, check_adversarial_branch, checkpoint_keys, task_instance
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
def test_the_adversarial_branch_follows_the_paper_and_trains_only_the_discriminator_on_detached_fakes(
    tmp_path: Path,
) -> None:
    check_adversarial_branch(InpaintingTask, torch.rand(4, 3, 32, 32), tmp_path, plugin=sslx_inpainting.plugin)


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_adversarial_run_logs_both_terms_and_resumes_with_the_discriminator(tmp_path: Path) -> None:
    run = assert_adversarial_run_resumes(tmp_path, "inpainting", sslx_inpainting.plugin)
    assert any(key.startswith("task/inpainting/decoder.") for key in checkpoint_keys(run))
