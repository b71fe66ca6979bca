"""Behaviour of the colorization task: inputs, targets, losses, representation, and the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sslx_colorization import plugin
from sslx_colorization.rebalance import ColourPrior
from sslx_colorization.task import ColorizationTask
from torch import nn
from torch.nn import functional as F

import ssl_engine.testing as kit
from ssl_engine.api import (
    LAB_SCALE,
    SettingError,
    ab_bins,
    lightness_input_from_rgb,
    rgb_to_lab,
    with_colour,
)
from ssl_engine.testing import pretext_batch as draw

BINS = ab_bins()


def test_the_network_input_carries_no_colour() -> None:
    task = kit.task_instance(ColorizationTask)
    images, other = kit.lightness_twins(kit.block_images())
    assert other.min() >= 0 and other.max() <= 1 and (other - images).abs().max() > 0.05
    first, second = draw(task, images), draw(task, other)
    assert first.inputs.shape == (4, 3, 32, 32) and first.views == 1
    torch.testing.assert_close(first.inputs, second.inputs, atol=1e-4, rtol=0)
    assert not torch.allclose(first.targets, second.targets)  # the colour is what changes: the targets


@pytest.mark.parametrize("output_stride", [1, 4])
def test_regression_targets_are_the_ab_of_each_output_pixel(output_stride: int) -> None:
    task = kit.task_instance(ColorizationTask, output_stride=output_stride)
    images = kit.block_images()
    batch = draw(task, images)
    side = 32 // output_stride
    assert batch.targets.shape == (4, 2, side, side)
    expected = kit.block_means(rgb_to_lab(images)[:, 1:], output_stride)  # the ab of each output pixel's block
    torch.testing.assert_close(batch.extras["ab"], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.targets, expected / LAB_SCALE, atol=1e-5, rtol=0)


def test_regression_forward_uses_the_registered_loss_and_reports_ab_rmse() -> None:
    task = kit.task_instance(ColorizationTask)
    modules = task.build_modules()
    assert set(modules) == {"decoder"}
    backbone = task.context.make_backbone(3)
    batch = draw(task, kit.block_images())
    output = task.forward(backbone, modules, nn.ModuleDict(), batch)
    assert output.predictions is not None and output.predictions.shape == (4, 2, 32, 32)
    torch.testing.assert_close(output.losses["color"], F.mse_loss(output.predictions, batch.targets))
    rmse = ((output.predictions * LAB_SCALE - batch.extras["ab"]) ** 2).mean().sqrt()
    torch.testing.assert_close(output.metrics["ab_rmse"], rmse.detach())
    output.losses["color"].backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_classification_targets_are_the_nearest_bins_of_each_output_pixel() -> None:
    task = kit.task_instance(ColorizationTask, loss_mode="classification", output_stride=4)
    batch = draw(task, kit.block_images())
    assert batch.targets.shape == (4, 8, 8) and batch.targets.dtype == torch.int64
    kit.assert_nearest_ab_bins(batch.targets, batch.extras["ab"])
    assert batch.extras["soft_classes"].shape == (4, 5, 8, 8)
    assert (batch.extras["soft_classes"][:, 0] == batch.targets).all()
    torch.testing.assert_close(batch.extras["soft_weights"].sum(1), torch.ones(4, 8, 8))


def test_classification_loss_is_the_rebalanced_soft_cross_entropy() -> None:
    task = kit.task_instance(ColorizationTask, loss_mode="classification", output_stride=4)
    modules = task.build_modules()
    assert modules["decoder"](torch.zeros(1, 32, 4, 4)).shape == (1, BINS.classes, 8, 8)
    backbone = task.context.make_backbone(3)
    batch = draw(task, kit.block_images())
    output = task.forward(backbone, modules, nn.ModuleDict(), batch)
    assert output.predictions is not None
    # A plain per-pixel reference, with the prior as it stands after taking in this batch.
    weights = modules["prior"].weights()
    log_p = output.predictions.detach().float().log_softmax(dim=1)
    total, pixels = 0.0, 0
    for b in range(4):
        for i in range(8):
            for j in range(8):
                soft = 0.0
                for k in range(5):
                    q = batch.extras["soft_classes"][b, k, i, j]
                    soft += float(batch.extras["soft_weights"][b, k, i, j]) * float(log_p[b, q, i, j])
                total += -float(weights[batch.targets[b, i, j]]) * soft
                pixels += 1
    assert float(output.losses["color"].detach()) == pytest.approx(total / pixels, rel=1e-4)
    assert 0 <= float(output.metrics["accuracy"]) <= 1 and torch.isfinite(output.metrics["ab_rmse"])
    output.losses["color"].backward()


def test_the_colour_prior_learns_only_in_training_and_is_checkpointed() -> None:
    task = kit.task_instance(ColorizationTask, loss_mode="classification", output_stride=4)
    modules = task.build_modules()
    backbone = task.context.make_backbone(3)
    batch = draw(task, kit.block_images())
    prior = modules["prior"]
    assert isinstance(prior, ColourPrior) and "prior.counts" in modules.state_dict()
    task.forward(backbone, modules, nn.ModuleDict(), batch)
    assert float(prior.counts.sum()) == 4 * 8 * 8
    modules.eval()
    task.forward(backbone.eval(), modules, nn.ModuleDict(), batch)
    assert float(prior.counts.sum()) == 4 * 8 * 8


def test_predictions_decode_by_the_annealed_mean() -> None:
    """A decoder that puts all mass on the true bins gives the bins' centres back as ab."""
    task = kit.task_instance(ColorizationTask, loss_mode="classification", output_stride=4)
    batch = draw(task, kit.block_images())

    class Oracle(nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return F.one_hot(batch.targets, BINS.classes).permute(0, 3, 1, 2).float() * 50.0

    modules = nn.ModuleDict({"decoder": Oracle(), "prior": ColourPrior(BINS)})
    output = task.forward(task.context.make_backbone(3), modules, nn.ModuleDict(), batch)
    assert float(output.metrics["accuracy"]) == 1.0
    centres = BINS.centres[batch.targets].permute(0, 3, 1, 2)  # (B, 2, h, w)
    expected = (centres - batch.extras["ab"]).square().mean().sqrt()
    torch.testing.assert_close(output.metrics["ab_rmse"], expected, atol=1e-3, rtol=0)
    assert float(output.metrics["ab_rmse"]) < 5  # within half a bin of the true colour


def test_representation_is_the_backbone_on_the_lightness_image() -> None:
    task = kit.task_instance(ColorizationTask)
    backbone = task.context.make_backbone(3).eval()
    representation = task.representation(backbone, task.build_modules()).eval()
    images, other = kit.lightness_twins(kit.block_images())
    features = representation(images)
    assert features.shape == (4, representation.feature_dim) and representation.feature_dim == 32
    torch.testing.assert_close(features, backbone.pooled(lightness_input_from_rgb(images)))
    torch.testing.assert_close(representation(other), features, atol=1e-4, rtol=0)


def test_output_stride_must_divide_the_backbone_stride() -> None:
    kit.task_instance(ColorizationTask, output_stride=8)
    with pytest.raises(SettingError, match="output_stride"):
        kit.task_instance(ColorizationTask, output_stride=16)
    with pytest.raises(SettingError, match="loss_mode"):
        kit.task_instance(ColorizationTask, loss_mode="gan")


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_pretrains_and_writes_a_checkpoint(tmp_path: Path) -> None:
    with kit.cli_plugins(("colorization", plugin)):
        run = kit.pretrain_cli(tmp_path, "colorization", "--data", kit.KIT_DATA)
    assert any(key.startswith("task/colorization/decoder.") for key in kit.checkpoint_keys(run))


def test_cli_refuses_grayscale_data(tmp_path: Path) -> None:
    run = tmp_path / "r"
    with kit.cli_plugins(("colorization", plugin)):
        result = kit.run_cli("pretrain", "--task", "colorization", "--data", "fashion-mnist", "--out", run)
    assert result.exit_code == 2, result.output
    assert "colorization" in result.stderr and "needs colour images" in result.stderr
    assert not run.exists()


@pytest.mark.parametrize("settings", [{}, {"loss_mode": "classification", "output_stride": 4}])
def test_keeps_the_engine_contract(settings: dict[str, object]) -> None:
    kit.check_pretext_task(ColorizationTask, settings=settings)


def test_drawing_shows_input_target_and_prediction_in_true_colours() -> None:
    task = kit.task_instance(ColorizationTask, output_stride=4)
    images = kit.block_images()
    lab = rgb_to_lab(images)
    torch.testing.assert_close(with_colour(lab[:, :1], lab[:, 1:]), images, atol=1e-3, rtol=0)  # L + ab = image
    batch = draw(task, images)
    before = task.draw(images, batch, None)
    output = task.forward(task.context.make_backbone(3), task.build_modules(), nn.ModuleDict(), batch)
    after = task.draw(images, batch, output)
    assert after.width > before.width  # a column more: the prediction
    assert len(after.info["cells"]) == len(before.info["cells"]) == len(images)
    assert len(after.info["cells"][0]) == len(before.info["cells"][0]) + 1
    # The first column is the original, as it is: a pixel of the picture has the image's colour.
    left, top, _, _ = before.info["cells"][0][0]  # row 0's original
    pixel = before.getpixel((left + 3, top + 3))  # inside the top-left block (4 px, drawn at 8)
    assert pixel == tuple(round(float(v) * 255) for v in images[0, :, 0, 0])


@pytest.mark.slow
def test_cli_refuses_a_loss_in_classification_mode_and_uses_it_in_regression(tmp_path: Path) -> None:
    with kit.cli_plugins(("colorization", plugin)):
        refused = kit.run_cli("pretrain", "--task", "colorization", "--set", "colorization.loss_mode=classification",
                          "--loss", "colorization=l1", "--out", tmp_path / "run")  # fmt: skip
        assert refused.exit_code == 2, refused.output
        assert "--loss colorization=l1" in refused.stderr and "computes its own loss" in refused.stderr
        assert "colorization.loss_mode=classification" in refused.stderr
        assert not (tmp_path / "run").exists()
        run = kit.pretrain_cli(
            tmp_path, "colorization", "--loss", "colorization=l1", "--data", kit.KIT_DATA, "--steps", 1
        )
    assert 'loss = "l1"' in (run / "config.toml").read_text()
