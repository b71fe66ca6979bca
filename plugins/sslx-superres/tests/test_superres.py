"""Behaviour of the super-resolution task: the bicubic inputs, the residual output, the pixel loss, the
adversarial branch in the engine's real training step, and real CLI runs (plain, adversarial, resumed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sslx_superres.plugin
import torch
from PIL import Image
from sslx_superres.degrade import bicubic_degrade, low_resolution_size
from sslx_superres.task import INITIAL_RESIDUAL_SCALE, SuperResolutionTask
from torch import Tensor, nn
from torch.nn import functional as F

from ssl_engine.api import MEAN, Backbone, SettingError, UpConvDecoder, normalize, psnr
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.testing import assert_adversarial_run_resumes, check_adversarial_branch, checkpoint_keys, task_instance
from ssl_engine.testing import pretext_batch as draw

torch.set_num_threads(2)


def shapes(count: int, size: int = 32) -> Tensor:
    dataset = ShapesDataset("test", size, size=count)
    return torch.stack([dataset[i][0] for i in range(count)]).float() / 255  # (B, 3, S, S) in [0, 1]


# --- the bicubic inputs ------------------------------------------------------------------------------------
def test_downsampling_matches_pil_bicubic_and_the_batch_matches_each_image_alone() -> None:
    images = shapes(6, 32)
    low = F.interpolate(images, size=(8, 8), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    for b in range(6):
        pixels = (images[b].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        small = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BICUBIC), dtype=np.float32)
        # PIL works on uint8 and rounds; antialiased bicubic in torch is the same filter.
        assert np.abs(low[b].permute(1, 2, 0).numpy() * 255 - small).max() <= 2.0
    degraded = bicubic_degrade(images, 4)
    one_by_one = torch.cat([bicubic_degrade(image[None], 4) for image in images])
    torch.testing.assert_close(degraded, one_by_one)
    assert degraded.shape == images.shape and degraded.min() >= 0 and degraded.max() <= 1
    assert low_resolution_size(32, 4) == 8 and low_resolution_size(30, 4) == 8 and low_resolution_size(16, 32) == 1


def test_inputs_are_the_normalised_bicubic_images_and_targets_the_originals() -> None:
    images = shapes(4, 32)
    batch = draw(task_instance(SuperResolutionTask, 32, factor=2), images)
    torch.testing.assert_close(batch.inputs, normalize(bicubic_degrade(images, 2)))
    torch.testing.assert_close(batch.targets, normalize(images))
    again = draw(task_instance(SuperResolutionTask, 32, factor=2), images, step=5)  # the degradation has no randomness
    assert torch.equal(again.inputs, batch.inputs) and batch.views == 1


def test_bicubic_psnr_falls_with_the_factor_and_beats_a_flat_mean_image() -> None:
    images = shapes(32, 32)
    scores = [float(psnr(bicubic_degrade(images, factor), images)) for factor in (2, 4, 8)]
    mean_image = torch.tensor(MEAN).view(1, 3, 1, 1).expand_as(images)
    assert scores[0] > scores[1] > scores[2] > float(psnr(mean_image, images)) + 3
    assert float(psnr(images, images)) == pytest.approx(100.0)  # the clamp on a perfect reconstruction


def test_psnr_matches_a_plain_reference() -> None:
    predicted, target = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    expected = sum(10 * math.log10(1 / float(((p - t) ** 2).mean())) for p, t in zip(predicted, target, strict=True))
    assert float(psnr(predicted, target)) == pytest.approx(expected / 3, rel=1e-5)


# --- the output and the loss -------------------------------------------------------------------------------
def test_output_is_bicubic_plus_residual_and_the_loss_its_l2() -> None:
    task = task_instance(SuperResolutionTask, 32)
    backbone, modules = task.context.make_backbone(3), task.build_modules()
    batch = draw(task, shapes(4, 32))
    residuals: list[Tensor] = []
    modules["decoder"].register_forward_hook(lambda module, args, output: residuals.append(output))
    output = task.forward(backbone, modules, nn.ModuleDict(), batch)
    assert set(output.losses) == {"pixel"} and output.predictions is not None
    torch.testing.assert_close(output.predictions, batch.inputs + residuals[0])
    torch.testing.assert_close(output.losses["pixel"], ((output.predictions - batch.targets) ** 2).mean())


def test_a_fresh_decoder_starts_next_to_the_bicubic_image() -> None:
    task = task_instance(SuperResolutionTask, 32)
    torch.manual_seed(0)
    usual = UpConvDecoder(32, 3, 8)
    torch.manual_seed(0)
    modules = task.build_modules()
    last = modules["decoder"].layers[-1]
    torch.testing.assert_close(last.weight, INITIAL_RESIDUAL_SCALE * usual.layers[-1].weight)
    assert (last.bias == 0).all()
    images = shapes(8, 32)
    output = task.forward(task.context.make_backbone(3), modules, nn.ModuleDict(), draw(task, images))
    assert float(output.metrics["psnr"]) == pytest.approx(float(output.metrics["bicubic_psnr"]), abs=0.05)
    assert task.hparams["factor"] == 8
    assert float(output.metrics["bicubic_psnr"]) == pytest.approx(float(psnr(bicubic_degrade(images, 8), images)))
    with torch.no_grad():
        last.weight.zero_()
    output = task.forward(task.context.make_backbone(3), modules, nn.ModuleDict(), draw(task, images))
    assert float(output.metrics["psnr"]) == pytest.approx(float(output.metrics["bicubic_psnr"]), abs=1e-4)


class ConstantEncoder(Backbone):
    """An encoder that ignores its input: whatever reaches the output besides it is a path around it."""

    feature_dim, stride = 32, 8

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Parameter(torch.randn(1, 32, 4, 4))

    def forward(self, images: Tensor) -> Tensor:
        return self.features.expand(len(images), -1, -1, -1)


def test_the_only_path_from_input_to_residual_is_the_encoder() -> None:
    task = task_instance(SuperResolutionTask, 32)
    modules = task.build_modules().eval()
    nn.init.normal_(modules["decoder"].layers[-1].weight)  # a residual that is far from 0, so the test can fail
    first, second = draw(task, shapes(2, 32)), draw(task, torch.rand(2, 3, 32, 32))
    encoder = ConstantEncoder()
    outputs = [task.forward(encoder, modules, nn.ModuleDict(), batch) for batch in (first, second)]
    residuals = [out.predictions - batch.inputs for out, batch in zip(outputs, (first, second), strict=True)]
    torch.testing.assert_close(residuals[0], residuals[1])


def test_settings_and_loss_weights() -> None:
    assert task_instance(SuperResolutionTask, 32).loss_weights == {"pixel": 1.0, "adversarial": 0.001}
    weighted = task_instance(SuperResolutionTask, 32, pixel_weight=0.5, adversarial_weight=0.1)
    assert weighted.loss_weights == {"pixel": 0.5, "adversarial": 0.1}
    for bad in ("1", "9", "two"):
        with pytest.raises(SettingError, match="factor"):
            task_instance(SuperResolutionTask, 32, factor=bad)


# --- the adversarial branch --------------------------------------------------------------------------------
def test_the_adversarial_branch_adds_the_discriminator_its_terms_and_its_optimizer(tmp_path: Path) -> None:
    check_adversarial_branch(SuperResolutionTask, shapes(4, 32), tmp_path, plugin=sslx_superres.plugin)


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_adversarial_run_logs_both_terms_and_resumes_with_the_discriminator(tmp_path: Path) -> None:
    run = assert_adversarial_run_resumes(tmp_path, "superres", sslx_superres.plugin)
    assert any(key.startswith("task/superres/decoder.") for key in checkpoint_keys(run))
