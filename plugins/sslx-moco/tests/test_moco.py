"""Behaviour of the MoCo task (v2 and v3): InfoNCE against the papers' pseudo-code, the key encoder's momentum, the
queue, the checkpoint keys, refused settings, the conformance kit, and the real command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sslx_moco.loss import queue_logits, symmetric_logits
from sslx_moco.task import MoCoTask
from torch.nn import functional as F

from ssl_engine.api import BatchRandom, SettingError, TaskContext, TaskOutput, mlp_head
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.settings import resolve_settings
from ssl_engine.testing import assert_teachers_follow, check_pretext_task, prepare


def make_task(global_batch: int = 0, image_size: int = 32, **settings: object) -> MoCoTask:
    return MoCoTask(
        TaskContext(
            settings=resolve_settings("moco", MoCoTask.settings, settings),
            image_size=image_size,
            in_channels=3,
            feature_dim=32,
            feature_stride=8,
            make_head=mlp_head,
            loss_fn=F.cross_entropy,
            make_backbone=lambda channels: SmallConvNet(channels, width=4),
            global_batch=global_batch,
        )
    )


# --- InfoNCE against the papers' pseudo-code -----------------------------------------------------------------
def reference_v2_loss(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """He et al. 2020, Algorithm 1, query by query: -log(exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.queue_j/t)))."""
    losses = []
    for n in range(len(queries)):
        q = queries[n] / queries[n].norm()
        k = keys[n] / keys[n].norm()
        positive = torch.dot(q, k) / t
        negatives = torch.stack([torch.dot(q, queue[j]) / t for j in range(len(queue))])
        losses.append(-positive + torch.log(torch.exp(positive) + torch.exp(negatives).sum()))
    return torch.stack(losses).mean()


def reference_v3_loss(queries: torch.Tensor, keys: torch.Tensor, t: float) -> torch.Tensor:
    """Chen, Xie & He 2021, Algorithm 1: ctr(q1, k2) + ctr(q2, k1), ctr(q, k) = CE(q k^T / t, own index) * 2t."""
    total = queries.new_zeros(())
    for view, other in ((0, 1), (1, 0)):
        losses = []
        for n in range(len(queries)):
            q = queries[n, view] / queries[n, view].norm()
            logits = torch.stack([torch.dot(q, keys[m, other] / keys[m, other].norm()) / t for m in range(len(keys))])
            losses.append(-logits[n] + torch.logsumexp(logits, dim=0))
        total = total + torch.stack(losses).mean() * 2 * t
    return total


@pytest.mark.parametrize(("seed", "temperature"), [(0, 0.2), (1, 0.07), (2, 1.0)])
def test_v2_infonce_matches_algorithm_1_with_gradients(seed: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(6, 8, generator=generator, requires_grad=True)
    keys = torch.randn(6, 8, generator=generator)
    queue = F.normalize(torch.randn(20, 8, generator=generator), dim=1)
    logits = queue_logits(queries, keys, queue, temperature)
    assert logits.shape == (6, 21)
    loss = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    expected = reference_v2_loss(queries, keys, queue, temperature)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, queries)
    (expected_grad,) = torch.autograd.grad(expected, queries)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("seed", "temperature"), [(0, 0.2), (1, 1.0)])
def test_v3_symmetric_loss_matches_algorithm_1_with_gradients(seed: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(5, 2, 8, generator=generator, requires_grad=True)
    keys = torch.randn(5, 2, 8, generator=generator)
    logits = symmetric_logits(queries, F.normalize(keys, dim=2), temperature)
    assert logits.shape == (10, 5)
    targets = torch.arange(5).repeat_interleave(2)
    loss = 4 * temperature * F.cross_entropy(logits, targets)  # what the task computes
    expected = reference_v3_loss(queries, keys, temperature)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, queries)
    (expected_grad,) = torch.autograd.grad(expected, queries)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", [2, 3])
def test_forward_computes_the_papers_loss_from_the_two_encoders(version: int) -> None:
    """The task's loss equals the reference computed from its own query and key encoders' outputs, and trains
    the query encoder only."""
    torch.manual_seed(0)
    task = make_task(version=version, queue_size=24, projection_dim=16)
    modules, backbone = task.build_modules(), SmallConvNet(3, width=4)
    task.setup(backbone, modules, torch.nn.ModuleDict())
    batch = task.pseudo_labels(torch.rand(6, 3, 32, 32), BatchRandom(0, 0, "moco", 6))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    with torch.no_grad():
        features = backbone.pooled(batch.inputs)  # (12, D)
        projections = modules["projector"](features)
        keys = modules["key_projector"](modules["key_backbone"].pooled(batch.inputs)).view(6, 2, -1)
    if version == 2:
        # The query and the key view go through the networks as two batches of their own (batch norm statistics).
        with torch.no_grad():
            queries = modules["projector"](backbone.pooled(batch.inputs[0::2]))
            keys_2 = modules["key_projector"](modules["key_backbone"].pooled(batch.inputs[1::2]))
        expected = reference_v2_loss(queries, keys_2, modules.get_buffer("queue"), 0.2)
        torch.testing.assert_close(output.extras["keys"], F.normalize(keys_2, dim=1))
        assert output.predictions is not None and output.predictions.shape == (6, 25)
        assert torch.equal(batch.targets, torch.zeros(6, dtype=torch.long))
    else:
        with torch.no_grad():
            queries = modules["predictor"](projections).view(6, 2, -1)
        expected = reference_v3_loss(queries, keys, 0.2)
        assert output.predictions is not None and output.predictions.shape == (12, 6)
        assert batch.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert output.extras == {}
    torch.testing.assert_close(output.losses["contrastive"].detach(), expected, atol=1e-5, rtol=1e-5)
    output.losses["contrastive"].backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert all(p.grad is None for p in modules["key_backbone"].parameters())
    assert not any(p.requires_grad for p in modules["key_projector"].parameters())


def test_logits_stay_in_float32_under_autocast() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = queue_logits(torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16(), torch.randn(10, 8), 0.2)
    assert logits.dtype == torch.float32


# --- settings -----------------------------------------------------------------------------------------------
def test_settings_are_validated_naming_the_task() -> None:
    with pytest.raises(SettingError, match="moco.momentum"):
        make_task(momentum=1.5)
    with pytest.raises(SettingError, match="moco.momentum"):
        make_task(momentum=-0.5)
    with pytest.raises(SettingError, match="moco.temperature"):
        make_task(temperature=0)
    with pytest.raises(SettingError, match="moco.temperature"):
        make_task(temperature=-0.2)
    with pytest.raises(SettingError, match="moco.version"):
        make_task(version=1)


def test_the_queue_must_be_a_multiple_of_the_global_batch() -> None:
    make_task(global_batch=64)  # 4096 = 64 x 64
    with pytest.raises(SettingError, match=r"moco.queue_size=4096 must be a multiple of the global batch of 96"):
        make_task(global_batch=96)
    with pytest.raises(SettingError, match="moco.queue_size=100 .* global batch of 64 .*queue_size=128"):
        make_task(global_batch=64, queue_size=100)
    make_task(global_batch=96, version=3)  # v3 has no queue


def test_blur_and_solarize_follow_the_version() -> None:
    images = torch.rand(200, 3, 64, 64)
    v2 = make_task(image_size=64).pseudo_labels(images, BatchRandom(0, 0, "moco", 200)).extras
    assert 0.4 < v2["blurred"].float().mean() < 0.6 and "solarized" not in v2
    v3 = make_task(image_size=64, version=3, solarize=0.2).pseudo_labels(images, BatchRandom(0, 0, "moco", 200)).extras
    assert v3["blurred"][:, 0].all() and v3["blurred"][:, 1].float().mean() < 0.25
    assert not v3["solarized"][:, 0].any() and v3["solarized"][:, 1].any()
    small = make_task().pseudo_labels(torch.rand(4, 3, 32, 32), BatchRandom(0, 0, "moco", 4)).extras
    assert "blurred" not in small


# --- the contract, the momentum and the queue through whole training steps -------------------------------------
@pytest.mark.parametrize("version", [2, 3])
def test_the_whole_contract_including_the_step_aware_rules(version: int) -> None:
    check_pretext_task(MoCoTask, settings={"version": version})


def recording_keys(task: MoCoTask) -> list[torch.Tensor]:
    """Make ``task.after_step`` note the keys each step pushes."""
    pushed: list[torch.Tensor] = []
    after_step = task.after_step

    def recorded(backbone, modules, aux, batch, output: TaskOutput) -> None:  # type: ignore[no-untyped-def]
        pushed.append(output.extras["keys"].clone())
        after_step(backbone, modules, aux, batch, output)

    task.after_step = recorded  # type: ignore[method-assign]
    return pushed


@pytest.mark.parametrize("version", [2, 3])
def test_the_key_encoder_follows_the_momentum_formula(tmp_path: Path, version: int) -> None:
    base, steps = 0.8, 4
    subject = prepare(MoCoTask, settings={"version": version, "momentum": base, "queue_size": 16})
    trainer = subject.trainer(tmp_path / "run", steps=steps, batch_size=8, log_every=1)
    [runtime] = trainer.model.runtimes
    modules, backbone = runtime.modules, trainer.model.backbone
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for name in ("key_backbone", "key_projector") for p in modules[name].parameters())
    assert all(id(p) in optimized for p in modules["projector"].parameters())
    pairs = [(modules["key_backbone"], backbone), (modules["key_projector"], modules["projector"])]

    def momentum(step: int, total: int) -> float:
        """v2: constant (He et al. 2020, Eq. 2); v3: from the base to 1 along a cosine (Chen, Xie & He 2021)."""
        return base if version == 2 else 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2

    assert_teachers_follow(trainer, pairs, momentum)


def test_the_queue_takes_each_steps_keys_in_place_of_the_oldest(tmp_path: Path) -> None:
    """Queue of 16 keys, global batch 8: step 0 fills rows 0-7, step 1 rows 8-15, step 2 replaces rows 0-7."""
    trainer = prepare(MoCoTask, settings={"queue_size": 16}).trainer(tmp_path / "run", steps=3, batch_size=8)
    [runtime] = trainer.model.runtimes
    assert isinstance(runtime.task, MoCoTask)
    pushed = recording_keys(runtime.task)
    queue, next_row = runtime.modules.get_buffer("queue"), runtime.modules.get_buffer("queue_next")
    initial = queue.clone()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(16))  # random unit vectors at the start
    for images, _ in trainer.stream.batches(0):
        if trainer.step == 3:
            break
        trainer.device_step(images)
        assert int(next_row) == (8 * trainer.step) % 16
        if trainer.step == 1:
            assert torch.equal(queue[:8], pushed[0]) and torch.equal(queue[8:], initial[8:])
    assert len(pushed) == 3 and all(keys.shape == (8, 128) for keys in pushed)
    assert torch.equal(queue[:8], pushed[2]) and torch.equal(queue[8:], pushed[1])
    torch.testing.assert_close(queue.norm(dim=1), torch.ones(16))


def test_the_key_encoder_and_queue_are_in_the_checkpoint_under_their_prefix(tmp_path: Path) -> None:
    trainer = prepare(MoCoTask, settings={"queue_size": 16}).trainer(tmp_path / "run", steps=3, batch_size=8)
    trainer.train()
    tensors = read_checkpoint(checkpoint_paths(tmp_path / "run")[-1]).tensors
    modules = trainer.model.task_modules["moco"]
    for name in ("key_backbone", "key_projector"):
        for key, value in modules[name].state_dict().items():
            assert torch.equal(tensors[f"task/moco/{name}.{key}"], value)
    assert torch.equal(tensors["task/moco/queue"], modules.get_buffer("queue"))
    assert int(tensors["task/moco/queue_next"]) == 8  # 3 steps of 8 keys in a queue of 16
