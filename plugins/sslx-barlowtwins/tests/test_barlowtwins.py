"""Behaviour of the Barlow Twins task: the loss against the paper's Eq. 1-2 written as loops, the views, the
settings, the conformance kit, and the real command line (show, refused settings, a mixed run)."""

from __future__ import annotations

import math

import pytest
import torch
from sslx_barlowtwins.loss import BarlowTwinsLoss, cross_correlation, off_diagonal
from sslx_barlowtwins.task import BarlowTwinsTask

from ssl_engine.api import SettingError
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.testing import (
    assert_two_view_batch,
    check_pretext_task,
    pretext_batch,
    task_instance,
)

LAMBDA = 0.0051


# --- the loss against the paper ------------------------------------------------------------------------------
def reference_barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float, eps: float) -> torch.Tensor:
    """Eq. 1 and 2 of the paper, one entry at a time: the embeddings mean-centred along the batch, ``C_ij`` the
    cosine of dimension ``i`` of view A and dimension ``j`` of view B over the batch, with the ``eps`` of the
    paper's batch norm under each square root (``eps = 0`` is Eq. 2 exactly)."""
    count, size = z_a.shape
    centred_a = [[z_a[b, i] - sum(z_a[k, i] for k in range(count)) / count for i in range(size)] for b in range(count)]
    centred_b = [[z_b[b, j] - sum(z_b[k, j] for k in range(count)) / count for j in range(size)] for b in range(count)]
    norm_a = [torch.sqrt(sum(centred_a[b][i] ** 2 for b in range(count)) / count + eps) for i in range(size)]
    norm_b = [torch.sqrt(sum(centred_b[b][j] ** 2 for b in range(count)) / count + eps) for j in range(size)]
    loss = z_a.new_zeros(())
    for i in range(size):
        for j in range(size):
            c_ij = sum(centred_a[b][i] * centred_b[b][j] for b in range(count)) / count / (norm_a[i] * norm_b[j])
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


@pytest.mark.parametrize(("seed", "lambd", "eps"), [(0, LAMBDA, 1e-5), (1, 0.3, 0.0), (2, 1.0, 1e-5)])
def test_loss_matches_the_paper_written_as_loops_with_gradients(seed: int, lambd: float, eps: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    # Correlated views, as real twins are, with unequal scales and offsets per dimension.
    z_a = (torch.randn(7, 6, generator=generator) * torch.linspace(0.5, 3, 6) + 2).requires_grad_()
    z_b = (z_a.detach() + 0.5 * torch.randn(7, 6, generator=generator)).requires_grad_()
    invariance, redundancy, correlation = BarlowTwinsLoss(eps)(z_a, z_b)
    loss = invariance + lambd * redundancy
    expected = reference_barlow_twins(z_a, z_b, lambd, eps)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss, (z_a, z_b))
    expected_grads = torch.autograd.grad(expected, (z_a, z_b))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
    assert correlation.shape == (6, 6) and correlation.abs().max() <= 1 + 1e-5  # cosines


def test_cross_correlation_is_an_affine_free_batch_norm_product() -> None:
    """As the paper's code computes it: ``bn(z_a).T @ bn(z_b) / N``."""
    z_a, z_b = torch.randn(16, 5), torch.randn(16, 5)
    bn = torch.nn.BatchNorm1d(5, affine=False).train()
    torch.testing.assert_close(cross_correlation(z_a, z_b), bn(z_a).T @ bn(z_b) / 16)


def test_off_diagonal_takes_every_entry_but_the_diagonal() -> None:
    matrix = torch.arange(16.0).view(4, 4)
    expected = [float(matrix[i, j]) for i in range(4) for j in range(4) if i != j]
    assert off_diagonal(matrix).tolist() == expected
    assert off_diagonal(torch.ones(1, 1)).numel() == 0


def test_loss_is_zero_for_identical_decorrelated_views_and_invariant_to_scale() -> None:
    # Columns orthogonal and centred: C is the identity when both views are the same.
    centred = torch.randn(32, 8)
    z = torch.linalg.qr(centred - centred.mean(0)).Q  # (32, 8): orthonormal columns, still centred
    invariance, redundancy, correlation = BarlowTwinsLoss(eps=0)(z, z)
    assert float(invariance) < 1e-8
    # Per-dimension scales and offsets don't change C (standardised over the batch).
    moved = BarlowTwinsLoss(eps=0)(3 * z + 5, z * torch.linspace(1, 2, 8))
    torch.testing.assert_close(moved[2], correlation, atol=1e-5, rtol=0)
    shuffled = BarlowTwinsLoss()(z, z[torch.randperm(32)])
    assert float(shuffled[0]) > 1  # unrelated twins: the diagonal is far from 1


def test_loss_refuses_mismatched_or_single_rows() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        BarlowTwinsLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="N >= 2"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))


def test_loss_stays_float32_under_autocast() -> None:
    z_a, z_b = torch.randn(8, 4), torch.randn(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = BarlowTwinsLoss()(z_a.bfloat16(), z_b.bfloat16())
    assert all(term.dtype == torch.float32 for term in terms)


# --- the task -------------------------------------------------------------------------------------------------
def test_views_follow_byol_and_targets_are_the_twins_global_rows() -> None:
    images = torch.rand(8, 3, 32, 32)
    drawn = assert_two_view_batch(task_instance(BarlowTwinsTask), images).extras  # 16 views, targets 1, 0, 3, 2, ...
    assert "blurred" not in drawn  # blur=auto: none below 64 px
    assert not drawn["solarized"][:, 0].any()  # solarization p 0 on the first view, 0.2 on the second
    blurred = pretext_batch(task_instance(BarlowTwinsTask, blur="on"), images).extras["blurred"]
    assert blurred[:, 0].all()  # the paper's p 1.0 on the first view
    plain = pretext_batch(task_instance(BarlowTwinsTask, blur="off", solarize=0), images).extras
    assert "blurred" not in plain and "solarized" not in plain


def test_forward_gives_the_two_terms_weighted_by_lambda_and_trains_the_backbone() -> None:
    task = task_instance(BarlowTwinsTask, projector_dim=16)
    assert task.loss_weights == pytest.approx({"invariance": 1 / 16, "redundancy": LAMBDA / 16})  # per dimension
    modules = task.build_modules()
    backbone = SmallConvNet(3, width=4)
    batch = pretext_batch(task, torch.rand(6, 3, 32, 32))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    assert set(output.losses) == {"invariance", "redundancy"}
    # The views go through the networks one at a time, as the paper's f(y_a), f(y_b).
    views = batch.inputs.unflatten(0, (6, 2))
    z_a, z_b = (modules["head"](backbone.pooled(views[:, v])) for v in range(2))
    expected = reference_barlow_twins(z_a, z_b, LAMBDA, 1e-5)
    torch.testing.assert_close(output.losses["invariance"] + LAMBDA * output.losses["redundancy"], expected)
    torch.testing.assert_close(task.weighted_total(output.losses), expected / 16)
    task.weighted_total(output.losses).backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert output.predictions is not None and output.predictions.shape == (12, 12)
    assert torch.isneginf(output.predictions.diagonal()).all()
    assert 0 <= float(output.metrics["accuracy"]) <= 1
    assert -1 <= float(output.metrics["on_diagonal"]) <= 1 and float(output.metrics["off_diagonal"]) >= 0
    weights = task_instance(BarlowTwinsTask, scale=0.1, projector_dim=10, **{"lambda": 0.02}).loss_weights
    assert weights == pytest.approx({"invariance": 0.01, "redundancy": 0.0002})


def test_accuracy_finds_twins_that_agree() -> None:
    task = task_instance(BarlowTwinsTask, projector_dim=8)
    batch = pretext_batch(task, torch.rand(8, 3, 32, 32))

    class Twins(torch.nn.Module):  # each image's two views embed (almost) alike, the images differ
        feature_dim = 8

        def pooled(self, inputs: torch.Tensor) -> torch.Tensor:
            return codes[: len(inputs)] + 0.01 * torch.randn(len(inputs), 8)

    codes = torch.randn(8, 8)
    identity = torch.nn.ModuleDict({"head": torch.nn.Identity()})
    output = task.forward(Twins(), identity, torch.nn.ModuleDict(), batch)
    assert float(output.metrics["accuracy"]) == 1.0
    assert float(output.metrics["on_diagonal"]) > 0.99


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lambda": 0}, "barlowtwins.lambda must be > 0"),
        ({"lambda": -0.1}, "barlowtwins.lambda"),
        ({"lambda": math.nan}, "barlowtwins.lambda must be a finite number"),
        ({"projector_dim": 0}, "barlowtwins.projector_dim"),
        ({"scale": 0}, "barlowtwins.scale"),
        ({"blur": "sometimes"}, "barlowtwins.blur must be one of auto, on, off"),
        ({"solarize": 1.5}, "barlowtwins.solarize must be <= 1"),
        ({"min_scale": 0}, "barlowtwins.min_scale"),
    ],
)
def test_settings_are_validated(settings: dict[str, object], message: str) -> None:
    with pytest.raises(SettingError, match=message.replace(".", r"\.")):
        task_instance(BarlowTwinsTask, **settings)


def test_conformance_kit() -> None:
    check_pretext_task(BarlowTwinsTask)
