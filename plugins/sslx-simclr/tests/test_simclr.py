"""Behaviour of the SimCLR task: NT-Xent, the augmentations against torchvision, the views, and a real CLI run."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from sslx_simclr import plugin
from sslx_simclr.loss import NTXentLoss
from sslx_simclr.task import SimCLRTask
from torch.nn import functional as F

from ssl_engine.api import MEAN, STD, BatchRandom, SettingError
from ssl_engine.testing import KIT_DATA, checkpoint_keys, cli_plugins, pretrain_cli, task_instance
from ssl_engine.testing import pretext_batch as draw
from ssl_engine.views.blur import gaussian_blur, kernel_size_for
from ssl_engine.views.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    hsv_to_rgb,
    rgb_to_hsv,
)
from ssl_engine.views.crop import draw_boxes, resized_crop

TORCHVISION_ADJUSTMENTS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def unnormalize(inputs: torch.Tensor) -> torch.Tensor:
    return inputs * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


# --- NT-Xent ------------------------------------------------------------------------------------------------
def reference_nt_xent(embeddings: torch.Tensor, temperature: float, smoothing: float = 0.0) -> torch.Tensor:
    """Eq. 1 of the paper with plain loops: views 2b and 2b + 1 are positives; mean over all anchors."""
    count = len(embeddings)
    losses = []
    for i in range(count):
        positive = i + 1 if i % 2 == 0 else i - 1
        logits, target = [], None
        for k in range(count):
            if k == i:
                continue
            if k == positive:
                target = len(logits)
            logits.append(F.cosine_similarity(embeddings[i], embeddings[k], dim=0) / temperature)
        log_probabilities = torch.stack(logits) - torch.logsumexp(torch.stack(logits), dim=0)
        # Label smoothing as torch defines it: (1 - e) * nll + e * mean over the classes of -log p.
        losses.append(-(1 - smoothing) * log_probabilities[target] - smoothing * log_probabilities.mean())
    return torch.stack(losses).mean()


def pair_targets(count: int) -> torch.Tensor:
    return torch.arange(count) ^ 1


@pytest.mark.parametrize("temperature", [0.5, 0.1, 2.0])
def test_nt_xent_matches_a_loop_reference_with_gradients(temperature: float) -> None:
    torch.manual_seed(int(temperature * 10))
    embeddings = torch.randn(12, 8, requires_grad=True)
    loss, logits = NTXentLoss(temperature)(embeddings, pair_targets(12))
    expected = reference_nt_xent(embeddings, temperature)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, embeddings)
    (expected_grad,) = torch.autograd.grad(expected, embeddings)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
    assert logits.shape == (12, 12) and torch.isneginf(logits.diagonal()).all()
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(embeddings, dim=1).T
    off_diagonal = ~torch.eye(12, dtype=torch.bool)
    torch.testing.assert_close(logits[off_diagonal], (cosine / temperature)[off_diagonal].detach())


def test_nt_xent_takes_the_chosen_cross_entropy() -> None:
    """``--loss simclr=label_smoothing`` smooths over the 2N - 1 candidates, and stays finite."""
    torch.manual_seed(0)
    embeddings = torch.randn(10, 6)
    smoothed = NTXentLoss(0.5, partial(F.cross_entropy, label_smoothing=0.1))(embeddings, pair_targets(10))[0]
    torch.testing.assert_close(smoothed, reference_nt_xent(embeddings, 0.5, smoothing=0.1), atol=1e-5, rtol=1e-5)


def test_nt_xent_is_low_and_accurate_when_views_agree() -> None:
    torch.manual_seed(0)
    images = torch.randn(8, 16)
    embeddings = images.repeat_interleave(2, dim=0) + 0.01 * torch.randn(16, 16)  # both views nearly the same
    loss, logits = NTXentLoss(0.1)(embeddings, pair_targets(16))
    assert (logits.argmax(dim=1) == pair_targets(16)).all()
    shuffled = NTXentLoss(0.1)(embeddings[torch.randperm(16)], pair_targets(16))[0]
    assert float(loss) < 0.5 * float(shuffled)


def test_nt_xent_refuses_targets_outside_the_batch_or_on_self() -> None:
    loss = NTXentLoss()
    with pytest.raises(ValueError, match="rows 0..3"):
        loss(torch.randn(4, 3), torch.tensor([1, 0, 3, 4]))  # 4 is not a view of this batch
    with pytest.raises(ValueError, match="other rows"):
        loss(torch.randn(4, 3), torch.tensor([0, 0, 3, 2]))  # row 0's positive can't be itself


# --- colour, crop, blur against torchvision, image by image --------------------------------------------------
@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_adjustments_match_torchvision_per_image(ours, theirs, low: float, high: float) -> None:
    torch.manual_seed(0)
    images = torch.rand(6, 3, 9, 11)
    factors = low + (high - low) * torch.rand(6)
    expected = torch.stack([theirs(image, float(factor)) for image, factor in zip(images, factors, strict=True)])
    torch.testing.assert_close(ours(images, factors), expected, atol=1e-5, rtol=0)


def test_hsv_round_trip_and_gray_pixels() -> None:
    images = torch.rand(4, 3, 8, 8)
    images[0] = images[0, :1]  # a gray image: hue is undefined, kept 0, and a hue shift leaves it gray
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(images, torch.full((4,), 0.3))[0], images[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("size", "antialias"), [(32, True), (16, False)])
def test_crops_match_torchvision_resized_crop_per_view(size: int, antialias: bool) -> None:
    """Crops are enlarged back to the image size in SimCLR (antialiasing has no effect on enlargement); shrinking
    is plain bilinear."""
    images = torch.rand(5, 3, 24, 30)
    boxes = draw_boxes(BatchRandom(0, 0, "crop", 5), 3, 24, 30)
    flips = torch.tensor([[True, False, True]] * 5)
    crops = resized_crop(images, boxes, flips, size)
    assert crops.shape == (5, 3, 3, size, size)
    for b in range(5):
        for v in range(3):
            top, left, height, width = boxes[b, v].tolist()
            expected = TF.resized_crop(images[b], top, left, height, width, [size, size], antialias=antialias)
            expected = TF.horizontal_flip(expected) if flips[b, v] else expected
            torch.testing.assert_close(crops[b, v], expected, atol=1e-5, rtol=0)


def test_crop_boxes_stay_inside_and_follow_the_paper_ranges() -> None:
    boxes = draw_boxes(BatchRandom(1, 2, "crop", 500), 2, 32, 32).flatten(0, 1)  # (1000, 4)
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (width >= 1).all()
    assert (top + height <= 32).all() and (left + width <= 32).all()
    area = (height * width).float() / 32**2
    assert area.min() >= 0.05 and area.max() <= 1  # 0.08 of the area, up to the rounding of each side
    aspect = width.float() / height.float()
    assert aspect.min() >= 0.6 and aspect.max() <= 1.7  # 3/4..4/3, up to rounding at small sizes
    assert area.mean() > 0.45  # uniform in [0.08, 1] before discarding boxes that don't fit: mean about 0.54
    assert len(torch.unique(top)) > 20 and len(torch.unique(left)) > 20  # positions cover the image


def test_crop_boxes_fall_back_to_the_centre_when_nothing_fits() -> None:
    # On a 4 x 40 image, boxes of 90-100% of the area with aspect ratio near 1 never fit: the centred
    # 4 x round(4 * 4/3) box is used, as torchvision does.
    boxes = draw_boxes(BatchRandom(0, 0, "crop", 8), 2, 4, 40, scale=(0.9, 1.0))
    assert (boxes == torch.tensor([0, 17, 4, 5])).all()


def test_blur_matches_torchvision_per_image() -> None:
    images = torch.rand(4, 3, 20, 20)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    apply = torch.tensor([True, True, False, True])
    blurred = gaussian_blur(images, sigma, apply, kernel_size_for(20))
    assert kernel_size_for(20) == 3 and kernel_size_for(32) == 3 and kernel_size_for(96) == 11
    for n in range(4):
        expected = TF.gaussian_blur(images[n], [3, 3], [float(sigma[n])] * 2) if apply[n] else images[n]
        torch.testing.assert_close(blurred[n], expected, atol=1e-5, rtol=0)


# --- the views ------------------------------------------------------------------------------------------------
def reference_views(images: torch.Tensor, drawn: dict[str, torch.Tensor], blur: bool) -> torch.Tensor:
    """The paper's pipeline with torchvision's per-image functions, one view at a time."""
    views = []
    size = images.shape[-1]
    for b in range(len(images)):
        for v in range(2):
            top, left, height, width = drawn["boxes"][b, v].tolist()
            view = TF.resized_crop(images[b], top, left, height, width, [size, size])
            view = TF.horizontal_flip(view) if drawn["flips"][b, v] else view
            if drawn["jittered"][b, v]:
                for operation in drawn["jitter_order"][b, v].tolist():
                    view = TORCHVISION_ADJUSTMENTS[operation](view, float(drawn["jitter"][b, v, operation]))
            if drawn["gray"][b, v]:
                view = TF.rgb_to_grayscale(view, num_output_channels=3)
            if blur and drawn["blurred"][b, v]:
                kernel = kernel_size_for(size)
                view = TF.gaussian_blur(view, [kernel, kernel], [float(drawn["sigma"][b, v])] * 2)
            views.append(view)
    return torch.stack(views)


@pytest.mark.parametrize("blur", [False, True])
def test_views_match_the_per_image_torchvision_pipeline(blur: bool) -> None:
    images = torch.rand(12, 3, 32, 32)
    batch = draw(task_instance(SimCLRTask, blur=blur, strength=1.0), images, step=5)
    assert batch.inputs.shape == (24, 3, 32, 32) and batch.views == 2
    drawn = batch.extras
    assert drawn["jitter_order"].sort(dim=-1).values.eq(torch.arange(4)).all()  # each order is a permutation
    # The jitter orders used differ between views, so the random order is really exercised.
    assert len({tuple(order) for order in drawn["jitter_order"].flatten(0, 1).tolist()}) > 5
    expected = reference_views(images, drawn, blur)
    torch.testing.assert_close(unnormalize(batch.inputs), expected, atol=1e-5, rtol=0)


def test_every_view_gets_its_own_parameters() -> None:
    images = torch.rand(64, 3, 32, 32)
    drawn = draw(task_instance(SimCLRTask), images).extras
    assert drawn["boxes"].shape == (64, 2, 4) and drawn["jitter"].shape == (64, 2, 4)
    boxes = drawn["boxes"].flatten(0, 1)
    assert len(torch.unique(boxes, dim=0)) > 120  # 128 views: crops practically all different
    assert (drawn["boxes"][:, 0] != drawn["boxes"][:, 1]).any(dim=1).float().mean() > 0.95
    jitter = drawn["jitter"].flatten(0, 1)
    assert len(torch.unique(jitter[:, 0])) == 128 and len(torch.unique(jitter[:, 3])) == 128
    assert jitter[:, :3].min() >= 0.6 and jitter[:, :3].max() <= 1.4  # 1 -+ 0.8 * 0.5
    assert jitter[:, 3].abs().max() <= 0.1  # hue: 0.2 * 0.5
    assert 0.65 < drawn["jittered"].float().mean() < 0.95  # p 0.8
    assert 0.1 < drawn["gray"].float().mean() < 0.3  # p 0.2
    assert 0.35 < drawn["flips"].float().mean() < 0.65  # p 0.5


def test_gray_views_have_identical_channels() -> None:
    batch = draw(task_instance(SimCLRTask, gray_probability=0.5), torch.rand(32, 3, 32, 32))
    views = unnormalize(batch.inputs)
    channels_equal = torch.isclose(views[:, 0], views[:, 1], atol=1e-5).flatten(1).all(dim=1)
    assert (channels_equal == batch.extras["gray"].flatten()).all()


def test_same_seed_same_views_other_step_or_seed_other_views() -> None:
    task = task_instance(SimCLRTask)
    images = torch.rand(8, 3, 32, 32)
    first, again = draw(task, images, step=3), draw(task, images, step=3)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    for key in first.extras:
        assert torch.equal(first.extras[key], again.extras[key])
    assert not torch.equal(first.extras["boxes"], draw(task, images, step=4).extras["boxes"])
    assert not torch.equal(first.inputs, draw(task, images, step=4).inputs)
    assert not torch.equal(first.inputs, draw(task, images, step=3, seed=1).inputs)


def test_blur_leaves_the_other_draws_unchanged() -> None:
    images = torch.rand(16, 3, 32, 32)
    plain, blurred = (
        draw(task_instance(SimCLRTask), images).extras,
        draw(task_instance(SimCLRTask, blur=True), images).extras,
    )
    assert set(blurred) - set(plain) == {"blurred", "sigma"}
    for key in plain:
        assert torch.equal(plain[key], blurred[key])
    assert blurred["sigma"].min() >= 0.1 and blurred["sigma"].max() <= 2.0


def test_targets_are_the_global_rows_of_the_other_view() -> None:
    images = torch.rand(8, 3, 32, 32)
    task = task_instance(SimCLRTask)
    whole = draw(task, images)
    assert whole.targets.tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14]
    second_half = task.pseudo_labels(images[4:], BatchRandom(0, 0, "simclr", 4, global_batch=8, offset=4))
    assert torch.equal(second_half.targets, whole.targets[8:])
    torch.testing.assert_close(second_half.inputs, whole.inputs[8:])
    # Alone in one process, rows 8..15 of a global batch have no partners: refused, not silently wrong.
    with pytest.raises(ValueError, match="rows 0..7"):
        task.forward(task.context.make_backbone(3), task.build_modules(), torch.nn.ModuleDict(), second_half)


# --- the task -------------------------------------------------------------------------------------------------
def test_forward_gives_the_loss_and_accuracy_and_trains_the_backbone() -> None:
    task = task_instance(SimCLRTask, projection_dim=16)
    modules = task.build_modules()
    backbone = task.context.make_backbone(3)  # feature_dim 32, as the context says
    batch = draw(task, torch.rand(6, 3, 32, 32))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    assert set(output.losses) == {"contrastive"} and torch.isfinite(output.losses["contrastive"])
    assert output.predictions is not None and output.predictions.shape == (12, 12)
    # Chance level: ln(2N - 1) for 2N = 12 views, and the untrained network is close to it.
    assert abs(float(output.losses["contrastive"].detach()) - math.log(11)) < 1.5
    output.losses["contrastive"].backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert modules["head"][-1].out_features == 16
    assert 0 <= float(output.metrics["accuracy"]) <= 1


def test_settings_are_validated() -> None:
    with pytest.raises(SettingError, match="temperature"):
        task_instance(SimCLRTask, temperature=0)
    with pytest.raises(SettingError, match="gray_probability"):
        task_instance(SimCLRTask, gray_probability=1.5)
    with pytest.raises(SettingError, match="projection_dim"):
        task_instance(SimCLRTask, projection_dim=0)


def test_autocast_keeps_augmentation_and_similarities_in_float32() -> None:
    task = task_instance(SimCLRTask)
    images = torch.rand(4, 3, 32, 32)
    plain = draw(task, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = draw(task, images)
        loss, logits = task.loss(torch.randn(8, 5), plain.targets)
    assert cast.inputs.dtype == torch.float32 and torch.equal(cast.inputs, plain.inputs)
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_pretrains_and_writes_a_checkpoint(tmp_path: Path) -> None:
    with cli_plugins(("simclr", plugin)):
        run = pretrain_cli(tmp_path, "simclr", "--data", KIT_DATA)
    assert any(key.startswith("task/simclr/head.") for key in checkpoint_keys(run))
