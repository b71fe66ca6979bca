"""Behaviour of the BYOL task: the loss against Algorithm 1, the target's momentum schedule, its checkpoint keys,
the asymmetric views, the conformance kit, and the real command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sslx_byol.loss import BYOLLoss, normalized_mse
from sslx_byol.task import BYOLTask
from torch.nn import functional as F

from ssl_engine.api import BatchRandom, SettingError
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.testing import assert_teachers_follow, check_pretext_task, prepare, pretext_batch, task_instance


# --- the loss against Algorithm 1 -----------------------------------------------------------------------------
def reference_byol_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grill et al. 2020, Algorithm 1, image by image: the squared distance of the l2-normalised prediction of one
    view from the l2-normalised (stopped) target projection of the other, both ways, averaged over the batch."""
    total = predictions.new_zeros(())
    for b in range(len(predictions)):
        for view, other in ((0, 1), (1, 0)):
            q = predictions[b, view] / predictions[b, view].norm()
            z = targets[b, other].detach() / targets[b, other].detach().norm()
            total = total + ((q - z) ** 2).sum()
    return total / len(predictions)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_algorithm_1_with_gradients(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.randn(7, 2, 16, generator=generator, requires_grad=True)
    targets = torch.randn(7, 2, 16, generator=generator, requires_grad=True)
    loss, cosine = BYOLLoss()(predictions, targets)
    expected = reference_byol_loss(predictions, targets)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, predictions)
    (expected_grad,) = torch.autograd.grad(expected, predictions)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
    # The stop-gradient: nothing reaches the target network's projections.
    assert loss.grad_fn is not None
    assert torch.autograd.grad(loss, targets, allow_unused=True)[0] is None
    torch.testing.assert_close(cosine, 1 - expected.detach() / 4, atol=1e-5, rtol=1e-5)


def test_normalized_mse_is_two_minus_two_cosine_and_scale_free() -> None:
    p, z = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(normalized_mse(p, z), 2 - 2 * F.cosine_similarity(p, z, dim=1))
    torch.testing.assert_close(normalized_mse(3 * p, 0.5 * z), normalized_mse(p, z))
    assert torch.allclose(normalized_mse(p, p), torch.zeros(5), atol=1e-6)
    assert torch.allclose(normalized_mse(p, -p), torch.full((5,), 4.0))


def test_loss_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, P\)"):
        BYOLLoss()(torch.randn(4, 8), torch.randn(4, 8))


def test_loss_stays_in_float32_under_autocast() -> None:
    predictions, targets = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = BYOLLoss()(predictions.bfloat16(), targets.bfloat16())
    assert loss.dtype == torch.float32


# --- the views ----------------------------------------------------------------------------------------------
def test_views_are_asymmetric_as_in_the_paper() -> None:
    """Blur on every first view and 10% of the second; solarization on 20% of the second only."""
    images = torch.rand(400, 3, 32, 32)
    drawn = task_instance(BYOLTask, blur="on").pseudo_labels(images, BatchRandom(0, 3, "byol", 400)).extras
    assert drawn["blurred"][:, 0].all()
    assert 0.05 < drawn["blurred"][:, 1].float().mean() < 0.15
    assert not drawn["solarized"][:, 0].any()
    assert 0.15 < drawn["solarized"][:, 1].float().mean() < 0.25


def test_blur_auto_blurs_from_64_px_only() -> None:
    small = pretext_batch(task_instance(BYOLTask, 32), torch.rand(4, 3, 32, 32))
    assert "blurred" not in small.extras
    large = pretext_batch(task_instance(BYOLTask, 64), torch.rand(4, 3, 64, 64))
    assert large.extras["blurred"][:, 0].all()
    assert "blurred" not in pretext_batch(task_instance(BYOLTask, 64, blur="off"), torch.rand(4, 3, 64, 64)).extras


def test_targets_are_the_images_rows_in_the_global_batch() -> None:
    images = torch.rand(6, 3, 32, 32)
    task = task_instance(BYOLTask)
    whole = task.pseudo_labels(images, BatchRandom(0, 0, "byol", 6))
    assert whole.inputs.shape == (12, 3, 32, 32) and whole.views == 2
    assert whole.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    half = task.pseudo_labels(images[3:], BatchRandom(0, 0, "byol", 3, global_batch=6, offset=3))
    assert torch.equal(half.targets, whole.targets[6:])
    torch.testing.assert_close(half.inputs, whole.inputs[6:])


# --- the task -------------------------------------------------------------------------------------------------
def test_forward_trains_the_online_network_and_not_the_target() -> None:
    task = task_instance(BYOLTask, projection_dim=16, predictor_hidden=24)
    modules = task.build_modules()
    backbone = SmallConvNet(3, width=4)
    task.setup(backbone, modules, torch.nn.ModuleDict())
    for online, target in ((backbone, "target_backbone"), (modules["projector"], "target_projector")):
        for a, b in zip(online.state_dict().values(), modules[target].state_dict().values(), strict=True):
            assert torch.equal(a, b)  # the target starts as the online network
        assert not any(p.requires_grad for p in modules[target].parameters())
    batch = task.pseudo_labels(torch.rand(6, 3, 32, 32), BatchRandom(0, 0, "byol", 6))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    assert set(output.losses) == {"byol"} and 0 <= float(output.losses["byol"].detach()) <= 8
    output.losses["byol"].backward()
    for trained in (backbone, modules["projector"], modules["predictor"]):
        assert all(p.grad is not None for p in trained.parameters())
    assert modules["predictor"][0].out_features == 24 and modules["predictor"][-1].out_features == 16


def test_settings_are_validated() -> None:
    with pytest.raises(SettingError, match="byol.base_momentum"):
        task_instance(BYOLTask, base_momentum=1.5)
    with pytest.raises(SettingError, match="byol.base_momentum"):
        task_instance(BYOLTask, base_momentum=-0.01)
    with pytest.raises(SettingError, match="byol.blur"):
        task_instance(BYOLTask, blur="sometimes")


def test_the_whole_contract_including_the_step_aware_rules() -> None:
    check_pretext_task(BYOLTask)


def expected_momentum(base: float, step: int, total: int) -> float:
    """Sec. 3.2: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


def test_the_target_follows_the_ema_formula_on_the_cosine_schedule(tmp_path: Path) -> None:
    base, steps = 0.9, 5
    trainer = prepare(BYOLTask, settings={"base_momentum": base}).trainer(tmp_path / "run", steps=steps, log_every=1)
    modules = trainer.model.task_modules["byol"]
    backbone = trainer.model.backbone
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for frozen in ("target_backbone", "target_projector"):
        assert not any(id(p) in optimized for p in modules[frozen].parameters())
    for trained in ("projector", "predictor"):
        assert all(id(p) in optimized for p in modules[trained].parameters())
    pairs = [(modules["target_backbone"], backbone), (modules["target_projector"], modules["projector"])]
    momenta = assert_teachers_follow(trainer, pairs, lambda step, total: expected_momentum(base, step, total))
    assert momenta[0] == pytest.approx(base) and momenta[-1] > 0.99  # from the base towards 1
    assert all(a < b for a, b in zip(momenta, momenta[1:], strict=False))


def test_the_target_is_in_the_checkpoint_under_its_prefix(tmp_path: Path) -> None:
    trainer = prepare(BYOLTask).trainer(tmp_path / "run", steps=2)
    trainer.train()
    tensors = read_checkpoint(checkpoint_paths(tmp_path / "run")[-1]).tensors
    modules = trainer.model.task_modules["byol"]
    for name, value in modules["target_backbone"].state_dict().items():
        assert torch.equal(tensors[f"task/byol/target_backbone.{name}"], value)
    for name, value in modules["target_projector"].state_dict().items():
        assert torch.equal(tensors[f"task/byol/target_projector.{name}"], value)
    assert any(key.startswith("task/byol/predictor.") for key in tensors)
    # The target has moved away from the online network (EMA), and both are kept.
    assert not torch.equal(tensors["task/byol/target_projector.0.weight"], tensors["task/byol/projector.0.weight"])
