"""Behaviour of the relative-patch-position task: geometry, each shortcut guard, labels, and real CLI runs.

Every check is made against plain per-sample code written here (loops, slicing, ``F.interpolate``), not against
the task's own helpers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from sslx_relpatch import plugin
from sslx_relpatch.patches import PatchGrid, resample, resampling_table
from sslx_relpatch.task import RelativePatchTask
from torch import Tensor
from torch.nn import functional as F

from ssl_engine.api import MEAN, STD, ImageSizeError, SettingError
from ssl_engine.testing import (
    KIT_DATA,
    check_pretext_task,
    checkpoint_keys,
    cli_plugins,
    pretrain_cli,
    run_checkpoint,
    run_cli,
    task_instance,
)
from ssl_engine.testing import pretext_batch as draw

# Neighbour classes, row-major around the centre, skipping it: (row step, column step).
STEPS = [(row - 1, column - 1) for row in range(3) for column in range(3) if (row, column) != (1, 1)]
# Gap and jitter stay on; the fixed normalisation makes pixel values readable back.
NO_GUARDS = {"downsample_probability": 0.0, "color_drop_probability": 0.0, "normalization": "dataset"}
relpatch_task = partial(task_instance, RelativePatchTask)  # (image_size, **settings)


def normalised(crop: Tensor) -> Tensor:
    """The fixed mean/std standardisation, written out: ``(3, h, w)`` in [0, 1]."""
    return (crop - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def patch_normalised(crop: Tensor) -> Tensor:
    """The per-patch normalisation, written out: channel means removed, then the patch divided by its RMS."""
    centred = crop - crop.mean(dim=(1, 2), keepdim=True)
    return centred / (centred.square().mean().sqrt() + 1e-5)


def expected_positions(grid: PatchGrid, origin: Tensor, jitter: Tensor, targets: Tensor) -> Tensor:
    """Top-left corners from the drawn grid origin, jitter and neighbour class, one sample at a time."""
    out = torch.empty(len(targets), 2, 2, dtype=torch.long)
    for b in range(len(targets)):
        row_step, column_step = STEPS[int(targets[b])]
        for index, (row, column) in enumerate([(1, 1), (1 + row_step, 1 + column_step)]):
            out[b, index, 0] = origin[b, 0] + grid.jitter + row * grid.pitch + jitter[b, index, 0]
            out[b, index, 1] = origin[b, 1] + grid.jitter + column * grid.pitch + jitter[b, index, 1]
    return out


def reference_crops(images: Tensor, positions: Tensor, size: int) -> Tensor:
    """Plain slicing: ``(B, 2, 3, size, size)`` in [0, 1]."""
    return torch.stack(
        [
            torch.stack([images[b, :, y : y + size, x : x + size] for y, x in positions[b].tolist()])
            for b in range(len(images))
        ]
    )


def high_frequency_energy(patch: Tensor) -> float:
    """Mean squared difference of neighbouring pixels, ``(C, h, w)``."""
    return float(patch.diff(dim=-1).square().mean() + patch.diff(dim=-2).square().mean())


# --- geometry ----------------------------------------------------------------------------------------------
def test_defaults_are_the_papers() -> None:
    defaults = dict(relpatch_task(64).context.settings)
    assert defaults == {
        "gap": 48 / 96,
        "jitter": 7 / 96,
        "downsample_probability": 0.33,  # the authors' code
        "downsample_min": 10 / 96,  # 100 pixels of a 96 x 96 patch
        "color_drop_probability": 1.0,
        "color_drop_channels": "two",
        "color_drop_noise": 0.01,
        "normalization": "patch",  # the authors' code
    }
    assert RelativePatchTask.default_head == "mlp" and RelativePatchTask.default_image_size == 64


def test_grid_is_the_papers_geometry_scaled_to_the_image() -> None:
    paper = PatchGrid.for_images(398)  # 3 * 96 + 2 * 48 + 2 * 7: exactly the paper's grid
    assert (paper.patch, paper.gap, paper.jitter, paper.min_gap) == (96, 48, 7, 34)
    default = PatchGrid.for_images(64)
    assert (default.patch, default.gap, default.jitter, default.span) == (15, 8, 1, 63)
    for size in range(31, 260):
        grid = PatchGrid.for_images(size)
        assert grid.span <= size < PatchGrid.with_patch(size, grid.patch + 1).span  # the largest patch that fits
        assert grid.gap == int(grid.patch / 2 + 0.5) and grid.jitter == int(grid.patch * 7 / 96 + 0.5)


@pytest.mark.parametrize("normalization", ["patch", "dataset"])
def test_views_targets_and_the_crop_match_a_plain_per_sample_crop(normalization: str) -> None:
    task = relpatch_task(64, **(NO_GUARDS | {"normalization": normalization}))
    reference = patch_normalised if normalization == "patch" else normalised
    images = torch.rand(16, 3, 64, 64)
    batch = draw(task, images)
    assert batch.views == 2 and batch.inputs.shape == (32, 3, 15, 15)
    assert batch.targets.shape == (16,) and batch.targets.dtype == torch.int64
    extras = batch.extras
    positions = expected_positions(task.grid, extras["origin"], extras["jitter"], batch.targets)
    assert torch.equal(extras["positions"], positions)
    expected = reference_crops(images, positions, 15)
    shown = batch.inputs.view(16, 2, 3, 15, 15)  # sample-major: centre, then neighbour
    for b in range(16):
        for index in range(2):
            torch.testing.assert_close(shown[b, index], reference(expected[b, index]), atol=1e-5, rtol=0)


def test_labels_cover_the_8_positions_and_the_grid_moves() -> None:
    batch = draw(relpatch_task(96), torch.rand(400, 3, 96, 96))  # 96 px: slack 4, so the grid has room to move
    counts = torch.bincount(batch.targets, minlength=8)
    assert len(counts) == 8 and counts.min() > 25
    assert len(torch.unique(batch.extras["origin"])) == 5  # origins 0..slack


# --- the gap ---------------------------------------------------------------------------------------------------
def pixel_ids(batch, size: int, image_size: int) -> Tensor:
    """Recover which image pixel each patch pixel shows, from images whose value is the pixel's index."""
    first = batch.inputs.view(-1, 2, 3, size, size)[:, :, 0]  # (B, 2, p, p), channel 0
    values = first * STD[0] + MEAN[0]
    return (values * image_size**2).round().long()


@pytest.mark.parametrize("image_size", [64, 128])
def test_gap_leaves_no_shared_pixels_between_the_two_patches(image_size: int) -> None:
    task = relpatch_task(image_size, **NO_GUARDS)
    grid = task.grid
    batch_size = 300
    ids = torch.arange(image_size**2, dtype=torch.float64).view(image_size, image_size) / image_size**2
    images = ids.float().expand(batch_size, 3, image_size, image_size).contiguous()
    batch = draw(task, images)
    shown = pixel_ids(batch, grid.patch, image_size)  # (B, 2, p, p)
    separations = []
    for b in range(batch_size):
        centre, neighbour = shown[b, 0], shown[b, 1]
        assert not set(centre.flatten().tolist()) & set(neighbour.flatten().tolist())  # no pixel in both
        # Where the pixels came from, read off the content (not the task's bookkeeping).
        (c_top, c_left), (n_top, n_left) = [(int(p.min()) // image_size, int(p.min()) % image_size) for p in
                                            (centre, neighbour)]  # fmt: skip
        assert [[c_top, c_left], [n_top, n_left]] == batch.extras["positions"][b].tolist()
        row_step, column_step = STEPS[int(batch.targets[b])]
        gaps = []
        if row_step:  # rows strictly between the two patches
            gaps.append(n_top - (c_top + grid.patch) if row_step > 0 else c_top - (n_top + grid.patch))
        if column_step:
            gaps.append(n_left - (c_left + grid.patch) if column_step > 0 else c_left - (n_left + grid.patch))
        separations.append(min(gaps))
    assert grid.min_gap == grid.gap - 2 * grid.jitter > 0
    assert min(separations) == grid.min_gap  # at least gap - 2 * jitter, and the bound is reached
    assert max(separations) == grid.gap + 2 * grid.jitter


def test_without_gap_and_jitter_the_patches_touch() -> None:
    """The control: gap 0 makes the patches adjacent, so edges would run straight across (what the gap stops)."""
    task = relpatch_task(64, gap=0.0, jitter=0.0, **NO_GUARDS)
    assert (task.grid.patch, task.grid.gap, task.grid.jitter) == (21, 0, 0)
    batch = draw(task, torch.rand(50, 3, 64, 64))
    positions = batch.extras["positions"]
    distance = (positions[:, 1] - positions[:, 0]).abs()  # (B, 2)
    assert ((distance == 0) | (distance == 21)).all()  # neighbours start exactly one patch side away


# --- jitter ----------------------------------------------------------------------------------------------------
def test_jitter_moves_each_patch_within_bounds() -> None:
    task = relpatch_task(128, **NO_GUARDS)  # 30 px patches, 15 px gap, jitter up to 2 px
    grid = task.grid
    batch = draw(task, torch.rand(500, 3, 128, 128))
    jitter, positions = batch.extras["jitter"], batch.extras["positions"]
    assert jitter.shape == (500, 2, 2)
    assert jitter.abs().max() == grid.jitter == 2
    assert len(torch.unique(jitter)) == 2 * grid.jitter + 1  # every shift in [-2, 2] is used
    assert (jitter[:, 0] != jitter[:, 1]).any(dim=1).float().mean() > 0.8  # each patch has its own shift
    unjittered = expected_positions(grid, batch.extras["origin"], torch.zeros_like(jitter), batch.targets)
    assert torch.equal(positions - unjittered, jitter)  # jitter is exactly the move away from the grid slot
    assert positions.min() >= 0 and (positions + grid.patch).max() <= 128  # inside the image
    steady = relpatch_task(128, jitter=0.0, **NO_GUARDS)
    still = draw(steady, torch.rand(50, 3, 128, 128)).extras
    assert steady.grid.jitter == 0 and not still["jitter"].any()
    assert ((still["positions"] - still["origin"][:, None]) % steady.grid.pitch == 0).all()  # on the slots


# --- downsampling --------------------------------------------------------------------------------------------------
def test_downsampled_patches_equal_a_down_up_resample_of_the_crop_and_lose_detail() -> None:
    task = relpatch_task(64, downsample_probability=0.5, color_drop_probability=0.0, normalization="dataset")
    images = torch.rand(200, 3, 64, 64)  # white noise: all detail is high-frequency
    batch = draw(task, images)
    downsampled, sides = batch.extras["downsampled"], batch.extras["sides"]
    assert 140 < int(downsampled.sum()) < 260
    assert (sides[~downsampled] == 15).all()
    assert sides[downsampled].min() >= 2 and sides[downsampled].max() <= 14  # 2 = round(15 * 10 / 96)
    assert len(torch.unique(sides[downsampled])) > 8
    crops = reference_crops(images, batch.extras["positions"], 15)
    shown = batch.inputs.view(200, 2, 3, 15, 15)
    for b in range(200):
        for index in range(2):
            crop = crops[b, index][None]
            if downsampled[b, index]:
                side = int(sides[b, index])
                small = F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
                crop = F.interpolate(small, size=(15, 15), mode="bilinear", align_corners=False)
                assert high_frequency_energy(crop[0]) < 0.7 * high_frequency_energy(crops[b, index])
            torch.testing.assert_close(shown[b, index], normalised(crop[0]), atol=1e-4, rtol=0)
    assert not draw(relpatch_task(64, downsample_probability=0.0), images).extras["downsampled"].any()
    assert draw(relpatch_task(64, downsample_probability=1.0), images).extras["downsampled"].all()


def test_batched_resampling_matches_interpolate_for_every_side() -> None:
    patches = torch.rand(4, 3, 11, 11)
    table = resampling_table(11)
    for side in range(1, 12):
        small = F.interpolate(patches, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        expected = F.interpolate(small, size=(11, 11), mode="bilinear", align_corners=False)
        torch.testing.assert_close(resample(patches, torch.full((4,), side), table), expected, atol=1e-5, rtol=0)
    assert torch.equal(resample(patches, torch.full((4,), 11), table), patches)  # full size: untouched


# --- colour dropping -------------------------------------------------------------------------------------------
def correlation(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("normalization", ["dataset", "patch"])
def test_dropped_channels_carry_no_information_of_the_image(normalization: str) -> None:
    task = relpatch_task(64, downsample_probability=0.0, normalization=normalization)
    # Two unrelated batches of smooth, strongly structured images, drawn with the same random numbers.
    first = F.interpolate(torch.rand(64, 3, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    second = F.interpolate(torch.rand(64, 3, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    one, two = draw(task, first), draw(task, second)
    dropped = one.extras["dropped"]
    assert torch.equal(dropped, two.extras["dropped"])
    assert (dropped.sum(-1) == 2).all()  # the paper: two of the three channels of every patch
    shown = {"one": one.inputs.view(64, 2, 3, 15, 15), "two": two.inputs.view(64, 2, 3, 15, 15)}
    crops = reference_crops(first, one.extras["positions"], 15)
    source_correlations = []
    for b in range(64):
        for index in range(2):
            kept = int((~dropped[b, index]).nonzero())
            for channel in dropped[b, index].nonzero().flatten().tolist():
                a, c = shown["one"][b, index, channel], shown["two"][b, index, channel]
                # The same noise field whatever the image: only its scale (1/100 of the kept channel's) differs.
                torch.testing.assert_close(a / a.std(), c / c.std(), atol=1e-4, rtol=0)
                ratio = a.std(unbiased=False) / shown["one"][b, index, kept].std(unbiased=False)
                assert 0.007 < float(ratio) < 0.013
                source_correlations.append(correlation(a, crops[b, index, channel]))
            # The kept channel is the image's, untouched up to the normalisation's scale and shift.
            assert correlation(shown["one"][b, index, kept], crops[b, index, kept]) > 0.9999
    correlations = torch.tensor(source_correlations)
    assert correlations.abs().mean() < 0.1 and abs(float(correlations.mean())) < 0.03  # 256 independent draws
    if normalization == "patch":
        rms = one.inputs.square().mean(dim=(1, 2, 3)).sqrt()
        torch.testing.assert_close(rms, torch.ones(128), atol=1e-3, rtol=0)


def test_colour_dropping_settings() -> None:
    images = torch.rand(300, 3, 32, 32)
    paper = draw(relpatch_task(32), images).extras["dropped"]  # (300, 2, 3): two of three channels, every patch
    assert (paper.sum(-1) == 2).all()
    assert ((~paper).float().mean(dim=(0, 1)) - 1 / 3).abs().max() < 0.07  # each channel as likely to be kept
    one = draw(relpatch_task(32, color_drop_channels="one"), images).extras["dropped"]
    assert (one.sum(-1) == 1).all()
    either = draw(relpatch_task(32, color_drop_channels="one_or_two"), images).extras["dropped"].sum(-1)
    assert set(either.unique().tolist()) == {1, 2} and 0.4 < float((either == 2).float().mean()) < 0.6
    some = draw(relpatch_task(32, color_drop_probability=0.5), images).extras["dropped"].any(-1)
    assert 0.4 < float(some.float().mean()) < 0.6
    none = draw(relpatch_task(32, color_drop_probability=0.0, downsample_probability=0.0), images)
    assert not none.extras["dropped"].any()
    with pytest.raises(SettingError, match="color_drop_channels"):
        relpatch_task(32, color_drop_channels="three")


# --- labels, determinism, forward ---------------------------------------------------------------------------
def test_same_seed_and_step_give_the_same_pairs() -> None:
    task = relpatch_task(64)
    images = torch.rand(8, 3, 64, 64)
    first, again, other = draw(task, images, step=3), draw(task, images, step=3), draw(task, images, step=4)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.inputs, other.inputs)


def test_forward_concatenates_the_two_towers_into_the_head() -> None:
    task = relpatch_task(64)
    modules = task.build_modules()
    assert modules["head"][0].in_features == 2 * 32  # mlp head on (B, 2 * D)
    backbone = task.context.make_backbone(3)  # feature_dim 32, as the context says
    batch = draw(task, torch.rand(6, 3, 64, 64))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    assert output.predictions is not None and output.predictions.shape == (6, 8)
    assert set(output.losses) == {"position"} and torch.isfinite(output.losses["position"])
    output.losses["position"].backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert 0 <= float(output.metrics["accuracy"]) <= 1
    # Swapping centre and neighbour changes the logits: the head sees an ordered pair.
    swapped = batch.inputs.view(6, 2, 3, 15, 15).flip(1).reshape(12, 3, 15, 15)
    modules.eval(), backbone.eval()
    with torch.no_grad():
        plain = task.forward(backbone, modules, torch.nn.ModuleDict(), batch).predictions
        batch.inputs = swapped
        assert not torch.allclose(plain, task.forward(backbone, modules, torch.nn.ModuleDict(), batch).predictions)


def test_representation_feeds_images_normalised_like_the_training_patches() -> None:
    task = relpatch_task(64)
    backbone = task.context.make_backbone(3).eval()
    images = torch.rand(5, 3, 64, 64)
    representation = task.representation(backbone, torch.nn.ModuleDict())
    expected = torch.stack([patch_normalised(image) for image in images])  # written out, image by image
    torch.testing.assert_close(representation(images), backbone.pooled(expected), atol=1e-5, rtol=1e-4)
    # So per-image brightness and contrast don't matter, as they didn't for the patches.
    torch.testing.assert_close(representation(0.5 * images + 0.2), representation(images), atol=1e-4, rtol=1e-4)
    fixed = relpatch_task(64, normalization="dataset").representation(backbone, torch.nn.ModuleDict())
    expected = torch.stack([normalised(image) for image in images])
    torch.testing.assert_close(fixed(images), backbone.pooled(expected), atol=1e-5, rtol=1e-4)


def test_drawing_outlines_the_two_patches() -> None:
    task = relpatch_task(64)
    images = torch.full((2, 3, 64, 64), 0.5)
    batch = draw(task, images)
    picture = task.draw(images, batch, None)
    assert picture.size[0] > 64 and picture.size[1] > 64
    assert torch.equal(images, torch.full((2, 3, 64, 64), 0.5))  # the originals are not painted on


def test_conformance() -> None:
    check_pretext_task(RelativePatchTask)
    check_pretext_task(RelativePatchTask, head="linear", settings={"normalization": "dataset"})
    no_guards = {"gap": 0.0, "jitter": 0.0, "downsample_probability": 0.0, "color_drop_probability": 0.0}
    check_pretext_task(RelativePatchTask, image_size=48, settings=no_guards)


# --- image size --------------------------------------------------------------------------------------------------
def test_too_small_images_are_refused_naming_the_minimum(tmp_path: Path) -> None:
    assert RelativePatchTask.min_image_size == 31  # 3 * 7 + 2 * 4 + 2 * 1
    RelativePatchTask.check_images(31)
    with pytest.raises(ImageSizeError, match="at least 31 px"):
        RelativePatchTask.check_images(30)
    with pytest.raises(ImageSizeError, match="at least 31 px"):
        relpatch_task(30)
    task = relpatch_task(31)
    assert task.grid.patch == 7
    with pytest.raises(ImageSizeError, match="at least 31 px"):
        draw(task, torch.rand(2, 3, 24, 24))  # a caller with other images than the run's
    # A wider gap needs larger images: gap 1.0 gives 7 px gaps, 3 * 7 + 2 * 7 + 2 * 1 = 37.
    context = relpatch_task(37, gap=1.0).context
    with pytest.raises(ImageSizeError, match="at least 37 px"):
        RelativePatchTask(replace(context, image_size=36))
    with cli_plugins(("relpatch", plugin)):  # and the command line says so before anything is written
        refused = run_cli("pretrain", "--task", "relpatch", "--image-size", 24, "--out", tmp_path / "run")
    assert refused.exit_code == 2 and "at least 31 px" in refused.stderr and not (tmp_path / "run").exists()


# --- the real command line ---------------------------------------------------------------------------------
def test_plugins_lists_relpatch_from_its_own_distribution() -> None:
    result = run_cli("plugins", "--json")  # the installed plugins, found through their entry points
    assert result.exit_code == 0, result.output
    by_task = {t: p for p in json.loads(result.stdout)["plugins"] for t in p["registered"].get("task", [])}
    assert by_task["relpatch"]["distribution"] == "sslx-relpatch"
    assert "register_tasks" in by_task["relpatch"]["hooks"]


@pytest.mark.slow
def test_cli_pretrains_20_steps_on_the_cpu(tmp_path: Path) -> None:
    with cli_plugins(("relpatch", plugin)):
        run = pretrain_cli(
            tmp_path, "relpatch", "--data", KIT_DATA, "--steps", 20, "--batch-size", 16, "--device", "cpu"
        )
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 20 and "relpatch/position" in lines[-1] and "relpatch/accuracy" in lines[-1]
    assert run_checkpoint(run).image_size == 64  # the task's default image size
    assert any(key.startswith("task/relpatch/") for key in checkpoint_keys(run))
