"""Behaviour of the split-brain task: the split, both targets, both networks, the representation, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sslx_splitbrain import plugin
from sslx_splitbrain.lightness_bins import L_BINS, lightness_centres, quantize_lightness
from sslx_splitbrain.representation import SplitBrainRepresentation
from sslx_splitbrain.task import SplitBrainTask
from torch import nn
from torch.nn import functional as F

import ssl_engine.testing as kit
from ssl_engine.api import (
    LAB_SCALE,
    REGRESSION_GAIN,
    ab_bins,
    lightness_input_from_rgb,
    rgb_to_lab,
)
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.plugins import get_host
from ssl_engine.testing import pretext_batch as draw
from ssl_engine.train.model import PretrainModel, RunSetupError

BINS = ab_bins()


def test_lightness_bins_are_50_bins_of_size_2() -> None:
    values = torch.tensor([0.0, 1.99, 2.0, 50.0, 98.5, 99.99, 100.0, -0.1, 100.2])
    assert quantize_lightness(values).tolist() == [0, 0, 1, 25, 49, 49, 49, 0, 49]
    assert L_BINS == 50
    torch.testing.assert_close(lightness_centres()[:, 0], torch.arange(1.0, 100.0, 2.0))
    for value in torch.rand(200, generator=torch.Generator().manual_seed(0)) * 100:
        assert int(quantize_lightness(value)) == int(float(value) // 2)


def test_the_split_gives_lightness_to_one_network_and_colour_to_the_other() -> None:
    task = kit.task_instance(SplitBrainTask)
    images = kit.block_images()
    batch = draw(task, images)
    lab = rgb_to_lab(images)
    torch.testing.assert_close(batch.inputs, lightness_input_from_rgb(images))  # F1: gray image of L
    torch.testing.assert_close(batch.extras["color_input"], lab[:, 1:] / LAB_SCALE)  # F2: ab only
    # Recolouring at equal lightness changes only F2's input.
    twin, other = kit.lightness_twins(images)
    torch.testing.assert_close(draw(task, other).inputs, draw(task, twin).inputs, atol=1e-4, rtol=0)


def test_classification_targets_are_the_bins_of_the_averaged_lab() -> None:
    task = kit.task_instance(SplitBrainTask)  # output_stride 4 by default, as the paper
    images = kit.block_images()
    batch = draw(task, images)
    small = kit.block_means(rgb_to_lab(images), 4)  # (B, 3, 8, 8)
    torch.testing.assert_close(batch.extras["lab"], small, atol=1e-4, rtol=0)
    assert batch.targets.shape == (4, 8, 8) and batch.targets.dtype == torch.int64
    kit.assert_nearest_ab_bins(batch.targets, small[:, 1:])
    assert (batch.extras["l_target"] == (small[:, 0] // 2).long().clamp(0, 49)).all()


def test_forward_gives_both_named_terms_and_trains_both_networks() -> None:
    task = kit.task_instance(SplitBrainTask)
    modules = task.build_modules()
    assert set(modules) == {"color_backbone", "to_ab", "to_l"}
    assert modules["color_backbone"].features[0][0].in_channels == 2  # F2 sees ab only
    backbone = task.context.make_backbone(3)
    batch = draw(task, kit.block_images())
    output = task.forward(backbone, modules, nn.ModuleDict(), batch)
    assert set(output.losses) == {"l_to_ab", "ab_to_l"}
    assert output.predictions is not None and output.predictions.shape == (4, BINS.classes, 8, 8)
    l_logits = modules["to_l"](modules["color_backbone"](batch.extras["color_input"]))
    assert l_logits.shape == (4, L_BINS, 8, 8)
    torch.testing.assert_close(output.losses["l_to_ab"], F.cross_entropy(output.predictions, batch.targets))
    assert {"lab_rmse", "ab_rmse", "l_rmse", "ab_accuracy", "l_accuracy"} <= set(output.metrics)
    task.weighted_total(output.losses).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in modules["color_backbone"].parameters())


def test_each_network_gets_only_its_own_loss() -> None:
    task = kit.task_instance(SplitBrainTask)
    modules = task.build_modules()
    backbone = task.context.make_backbone(3)
    output = task.forward(backbone, modules, nn.ModuleDict(), draw(task, kit.block_images()))
    output.losses["ab_to_l"].backward()
    assert all(p.grad is None for p in backbone.parameters())  # F1 never sees the L prediction's loss
    assert all(p.grad is not None for p in modules["color_backbone"].parameters())


def test_regression_mode_is_l2_on_both_halves() -> None:
    task = kit.task_instance(SplitBrainTask, loss_mode="regression", output_stride=1)
    modules = task.build_modules()
    batch = draw(task, kit.block_images())
    lab = rgb_to_lab(kit.block_images())
    torch.testing.assert_close(batch.targets, lab[:, 1:] / LAB_SCALE)
    torch.testing.assert_close(batch.extras["l_target"], (lab[:, :1] - 50) / LAB_SCALE)
    output = task.forward(task.context.make_backbone(3), modules, nn.ModuleDict(), batch)
    assert output.predictions is not None and output.predictions.shape == (4, 2, 32, 32)
    torch.testing.assert_close(output.losses["l_to_ab"], F.mse_loss(output.predictions, batch.targets))
    l_pred = REGRESSION_GAIN * modules["to_l"](modules["color_backbone"](batch.extras["color_input"]))
    torch.testing.assert_close(output.losses["ab_to_l"], F.mse_loss(l_pred, batch.extras["l_target"]))
    expected = ((l_pred.detach() * LAB_SCALE + 50 - lab[:, :1]) ** 2).mean().sqrt()
    torch.testing.assert_close(output.metrics["l_rmse"], expected, atol=1e-3, rtol=1e-4)


def build_engine_model(loss_mode: str, loss: str | None) -> PretrainModel:
    """The task built by the engine, as ``--set splitbrain.loss_mode=MODE [--loss splitbrain=LOSS]`` builds it."""
    spec = TaskSpec("splitbrain", settings={"loss_mode": loss_mode, "output_stride": 1}, loss=loss)
    return PretrainModel(PretrainConfig([spec]), get_host().registry, 32)


def test_regression_mode_uses_the_regression_loss_chosen_with_loss() -> None:
    model = build_engine_model("regression", "l1")
    [runtime] = model.runtimes
    batch = draw(runtime.task, kit.block_images())
    output = runtime.task.forward(model.backbone, runtime.modules, runtime.aux, batch)
    assert output.predictions is not None
    torch.testing.assert_close(output.losses["l_to_ab"], F.l1_loss(output.predictions, batch.targets))
    assert not torch.allclose(output.losses["l_to_ab"], F.mse_loss(output.predictions, batch.targets))


def test_loss_must_fit_the_loss_mode() -> None:
    with pytest.raises(RunSetupError, match="'l1' is a regression loss; task 'splitbrain' needs a classification"):
        build_engine_model("classification", "l1")
    with pytest.raises(RunSetupError, match="'cross_entropy' is a classification loss; .* needs a regression loss"):
        build_engine_model("regression", "cross_entropy")


def test_representation_concatenates_both_sub_networks() -> None:
    task = kit.task_instance(SplitBrainTask)
    modules = task.build_modules().eval()
    backbone = task.context.make_backbone(3).eval()
    representation = task.representation(backbone, modules).eval()
    assert isinstance(representation, SplitBrainRepresentation)
    assert representation.feature_dim == 32 + 32
    images = kit.block_images()
    features = representation(images)
    assert features.shape == (4, 64)
    torch.testing.assert_close(features[:, :32], backbone.pooled(lightness_input_from_rgb(images)))
    color_features = modules["color_backbone"].pooled(rgb_to_lab(images)[:, 1:] / LAB_SCALE)
    torch.testing.assert_close(features[:, 32:], color_features)
    assert {name for name, _ in representation.named_children()} == {"backbone", "color_backbone"}


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_pretrains_and_writes_both_networks(tmp_path: Path) -> None:
    with kit.cli_plugins(("splitbrain", plugin)):
        keys = kit.checkpoint_keys(kit.pretrain_cli(tmp_path, "splitbrain", "--data", kit.KIT_DATA))
    for part in ("color_backbone.", "to_ab.", "to_l."):
        assert any(key.startswith(f"task/splitbrain/{part}") for key in keys), part
    assert any(key.startswith("model/") for key in keys)


def test_cli_refuses_to_mix_it_with_other_tasks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with kit.cli_plugins(("splitbrain", plugin)):
        result = kit.run_cli("pretrain", "--task", "splitbrain", "--task", kit.REFERENCE_TASK, "--out", run)
    assert result.exit_code == 2, result.output
    assert "'splitbrain' cannot share the backbone" in result.stderr and kit.REFERENCE_TASK in result.stderr
    assert not run.exists()


def test_keeps_the_engine_contract() -> None:
    kit.check_pretext_task(SplitBrainTask)
    kit.check_pretext_task(SplitBrainTask, settings={"loss_mode": "regression"})


def test_drawing_has_a_column_per_half_and_the_prediction() -> None:
    task = kit.task_instance(SplitBrainTask)
    images = kit.block_images()
    batch = draw(task, images)
    before = task.draw(images, batch, None)
    output = task.forward(task.context.make_backbone(3), task.build_modules(), nn.ModuleDict(), batch)
    after = task.draw(images, batch, output)
    assert before.width == 4 * 68 + 4 and after.width == 5 * 68 + 4
