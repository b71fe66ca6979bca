"""Behaviour of the VICReg task: the loss against the paper's Algorithm 1 written as loops, the three logged terms
and their weights, the views, the settings, the conformance kit, and the real command line (show, refused settings,
a mixed run)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch
from sslx_vicreg.loss import VICRegLoss, off_diagonal
from sslx_vicreg.task import VICRegTask

from ssl_engine.api import SettingError
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.testing import (
    KIT_DATA,
    assert_two_view_batch,
    check_pretext_task,
    cli_plugins,
    pretext_batch,
    pretrain_cli,
    task_instance,
)

PAPER_WEIGHTS = {"invariance": 25.0, "variance": 25.0, "covariance": 1.0}


# --- the loss against the paper ------------------------------------------------------------------------------
def reference_terms(
    z_a: torch.Tensor, z_b: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 of the paper, one entry at a time: ``(s(Z, Z'), v(Z) + v(Z'), c(Z) + c(Z'))``."""
    count, size = z_a.shape
    invariance = sum((z_a[b, d] - z_b[b, d]) ** 2 for b in range(count) for d in range(size)) / (count * size)

    def moments(z: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        means = [sum(z[b, d] for b in range(count)) / count for d in range(size)]
        covariance = [
            [sum((z[b, i] - means[i]) * (z[b, j] - means[j]) for b in range(count)) / (count - 1) for j in range(size)]
            for i in range(size)
        ]
        return means, covariance

    variance = covariance_total = z_a.new_zeros(())
    for z in (z_a, z_b):
        _, covariance = moments(z)
        for d in range(size):
            std = torch.sqrt(covariance[d][d] + eps)
            variance = variance + torch.clamp(gamma - std, min=0) / size
        for i in range(size):
            for j in range(size):
                if i != j:
                    covariance_total = covariance_total + covariance[i][j] ** 2 / size
    return invariance, variance, covariance_total


def spread_pair(seed: int, count: int = 7, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Twins whose dimensions have stds on both sides of gamma = 1, so the hinge is exercised both ways."""
    generator = torch.Generator().manual_seed(seed)
    z_a = torch.randn(count, size, generator=generator) * torch.linspace(0.2, 2.5, size) + 1
    z_b = z_a + 0.4 * torch.randn(count, size, generator=generator)
    return z_a.requires_grad_(), z_b.requires_grad_()


@pytest.mark.parametrize(("seed", "gamma", "eps"), [(0, 1.0, 1e-4), (1, 1.5, 1e-3), (2, 0.5, 1e-4)])
def test_terms_match_algorithm_1_written_as_loops_with_gradients(seed: int, gamma: float, eps: float) -> None:
    z_a, z_b = spread_pair(seed)
    terms = VICRegLoss(gamma, eps)(z_a, z_b)
    expected = reference_terms(z_a, z_b, gamma, eps)
    assert 0 < float(expected[1].detach()) < 2  # some dimensions under gamma, some over
    for got, want in zip(terms, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    weights = [25.0, 25.0, 1.0]
    loss = sum(w * t for w, t in zip(weights, terms, strict=True))
    reference = sum(w * t for w, t in zip(weights, expected, strict=True))
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss, (z_a, z_b))
    expected_grads = torch.autograd.grad(reference, (z_a, z_b))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_each_term_does_its_job() -> None:
    z = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    invariance, variance, covariance = VICRegLoss()(z, z)
    assert float(invariance) == 0
    collapsed = torch.ones(64, 8) + 1e-3 * torch.randn(64, 8)
    assert float(VICRegLoss()(collapsed, collapsed)[1]) > 1.9  # every std near 0: the hinge near 1, twice
    assert float(VICRegLoss()(3 * z, 3 * z)[1]) == 0  # every std above 1
    redundant = torch.cat([z[:, :4], z[:, :4]], dim=1)  # dimensions repeated: covariance far from diagonal
    assert float(covariance) < 0.1 and float(VICRegLoss()(redundant, redundant)[2]) > 1.5  # 2 when exact


def test_off_diagonal_takes_every_entry_but_the_diagonal() -> None:
    matrix = torch.arange(9.0).view(3, 3)
    assert off_diagonal(matrix).tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]


def test_loss_refuses_bad_shapes_and_parameters_and_stays_float32() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="positive"):
        VICRegLoss(gamma=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = VICRegLoss()(torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16())
    assert all(term.dtype == torch.float32 for term in terms)


# --- the task -------------------------------------------------------------------------------------------------
def test_views_follow_byol_and_targets_are_the_twins_global_rows() -> None:
    images = torch.rand(8, 3, 32, 32)
    batch = assert_two_view_batch(task_instance(VICRegTask), images)  # 16 views, targets 1, 0, 3, 2, ...
    assert "blurred" not in batch.extras and not batch.extras["solarized"][:, 0].any()  # blur=auto: none at 32 px
    blur = task_instance(VICRegTask, blur="on")
    assert pretext_batch(blur, images).extras["blurred"][:, 0].all()  # the paper's p 1.0 on the first view


def test_forward_logs_three_terms_with_the_paper_weights_and_trains_the_backbone() -> None:
    task = task_instance(VICRegTask, projector_dim=16)
    assert task.loss_weights == PAPER_WEIGHTS
    modules = task.build_modules()
    backbone = SmallConvNet(3, width=4)
    batch = pretext_batch(task, torch.rand(6, 3, 32, 32))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    assert set(output.losses) == set(PAPER_WEIGHTS)
    views = batch.inputs.unflatten(0, (6, 2))
    z_a, z_b = (modules["head"](backbone.pooled(views[:, v])) for v in range(2))
    for name, expected in zip(("invariance", "variance", "covariance"), VICRegLoss()(z_a, z_b), strict=True):
        torch.testing.assert_close(output.losses[name], expected)
    task.weighted_total(output.losses).backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert output.predictions is not None and output.predictions.shape == (12, 12)
    assert 0 <= float(output.metrics["accuracy"]) <= 1 and float(output.metrics["std"]) > 0
    chosen = task_instance(VICRegTask, invariance_weight=10, variance_weight=0, covariance_weight=0.5)
    assert chosen.loss_weights == {"invariance": 10.0, "variance": 0.0, "covariance": 0.5}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"invariance_weight": -1}, "vicreg.invariance_weight must be >= 0"),
        ({"variance_weight": -0.5}, "vicreg.variance_weight"),
        ({"covariance_weight": math.inf}, "vicreg.covariance_weight must be a finite number"),
        ({"invariance_weight": 0, "variance_weight": 0, "covariance_weight": 0}, "not all 0"),
        ({"gamma": 0}, "vicreg.gamma must be > 0"),
        ({"eps": 0}, "vicreg.eps must be > 0"),
        ({"projector_dim": 0}, "vicreg.projector_dim"),
        ({"solarize": 2}, "vicreg.solarize must be <= 1"),
        ({"blur": "yes"}, "vicreg.blur must be one of auto, on, off"),
    ],
)
def test_settings_are_validated(settings: dict[str, object], message: str) -> None:
    with pytest.raises(SettingError, match=message.replace(".", r"\.")):
        task_instance(VICRegTask, **settings)


def test_conformance_kit() -> None:
    check_pretext_task(VICRegTask)


def test_trains_with_lars_unless_told_otherwise(tmp_path: Path) -> None:
    """The paper's optimiser is the task's default (SGD at the engine's rate barely trains it); ``--optimizer``
    still wins, and the run's config keeps what it trained with."""
    with cli_plugins(VICRegTask):  # the kit's small data
        default = pretrain_cli(tmp_path, "vicreg", "--data", KIT_DATA, "--steps", "1", "--out", tmp_path / "default")
        chosen = pretrain_cli(tmp_path, "vicreg", "--data", KIT_DATA, "--steps", "1", "--optimizer", "sgd")
    assert tomllib.loads((default / "config.toml").read_text())["optimizer"] == "lars"
    assert tomllib.loads((chosen / "config.toml").read_text())["optimizer"] == "sgd"
