"""The core's auxiliary-module mechanism (discriminators and the like), tested with an inline toy task through the
engine's real trainer: aux modules step with their own optimizer in the same step, on their own loss only, and a
resumed run restores them and their optimizer exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ssl_engine.checkpoint import checkpoint_path, read_checkpoint
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.images import normalize
from ssl_engine.run import build_run
from ssl_engine.task import PretextBatch, PretextTask, TaskOutput
from ssl_engine.testing import KIT_DATA, prepare
from ssl_engine.train.loop import Trainer

TASK = "critic_toy"
FOOL_WEIGHT = 0.5


class CriticTask(PretextTask):
    """A toy generator/critic pair on the backbone's pooled features.

    Main loss terms: ``main`` (the head's output squared) and ``fool`` (``-log sigmoid`` of the critic's score of
    the features, which back-propagates into the critic too, as a generator's adversarial term does into a
    discriminator). Aux loss:
    ``critic``, the critic regressed to 1 on *detached* features.
    """

    name = TASK
    summary = "toy task with an auxiliary critic"
    metric = "fool"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.loss_weights = {"main": 1.0, "fool": FOOL_WEIGHT}

    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"head": nn.Linear(self.context.feature_dim, 1)})

    def build_aux_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"critic": nn.Linear(self.context.feature_dim, 1)})

    def pseudo_labels(self, images, random):  # type: ignore[no-untyped-def]
        return PretextBatch(normalize(images), images.new_zeros(len(images)))

    def forward(self, backbone, modules, aux, batch):  # type: ignore[no-untyped-def]
        features = backbone.pooled(batch.inputs)  # (B, D)
        fool = F.softplus(-aux["critic"](features)).mean()  # -log sigmoid(score), as a GAN's generator term
        losses = {"main": modules["head"](features).square().mean(), "fool": fool}
        return TaskOutput(losses, {"fool": fool.detach()}, features)

    def aux_losses(self, aux, batch, output):  # type: ignore[no-untyped-def]
        return {"critic": critic_loss(aux["critic"], output.predictions.detach())}


def critic_loss(critic: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return (critic(features) - 1).square().mean()


REGISTRY = prepare(CriticTask).registry  # the core, the toy and the kit's data (32 shapes images)


def make_trainer(out: Path, steps: int, resume: bool = False, **options: Any) -> Trainer:
    config = PretrainConfig(
        [TaskSpec(TASK)], data=KIT_DATA, image_size=16, batch_size=8, steps=steps, workers=0, **options
    )
    return Trainer(build_run(config, REGISTRY, out, resume=resume))


def critic_of(trainer: Trainer) -> nn.Module:
    return trainer.model.aux_modules[TASK]["critic"]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def test_aux_modules_have_their_own_optimizer(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "r", steps=2)
    critic = {id(p) for p in critic_of(trainer).parameters()}
    main = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    aux = {id(p) for group in trainer.aux_optimizers[TASK].param_groups for p in group["params"]}
    assert aux == critic and not main & critic
    assert {id(p) for p in trainer.model.task_modules[TASK].parameters()} <= main


def test_a_step_trains_the_aux_modules_on_their_own_loss_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path / "r", steps=2)
    critic = critic_of(trainer)
    before = snapshot(critic)
    task = trainer.model.runtimes[0].task
    seen: dict[str, Any] = {}

    original_aux_losses = task.aux_losses

    def recording_aux_losses(aux, batch, output):  # type: ignore[no-untyped-def]
        seen["features"] = output.predictions.detach().clone()
        seen["critic_at_aux_loss"] = snapshot(critic)  # after the main step, before the aux one
        return original_aux_losses(aux, batch, output)

    optimizer = trainer.aux_optimizers[TASK]
    original_step = optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        seen["grads"] = {name: p.grad.detach().clone() for name, p in critic.named_parameters()}
        seen["steps"] = seen.get("steps", 0) + 1
        return original_step(*args, **kwargs)

    monkeypatch.setattr(task, "aux_losses", recording_aux_losses)
    monkeypatch.setattr(optimizer, "step", recording_step)
    images, _ = next(iter(trainer.stream.batches(0)))
    logged = trainer.train_step(images)

    # The main optimizer left the critic alone; its own optimizer then moved it, once.
    assert all(torch.equal(before[key], value) for key, value in seen["critic_at_aux_loss"].items())
    assert seen["steps"] == 1
    assert all(not torch.equal(before[key], value) for key, value in critic.state_dict().items())
    # The gradient it stepped on is the aux loss's alone: what the `fool` term sent into the critic was discarded.
    reference = nn.Linear(critic.in_features, 1)
    reference.load_state_dict(before)
    expected = torch.autograd.grad(critic_loss(reference, seen["features"]), list(reference.parameters()))
    for (name, grad), want in zip(seen["grads"].items(), expected, strict=True):
        torch.testing.assert_close(grad, want, msg=f"critic {name} gradient")
    # Both sides are logged, and the main loss is the weighted sum of the task's terms.
    assert {f"{TASK}/main", f"{TASK}/fool", f"{TASK}/critic"} <= set(logged)
    assert logged[f"{TASK}/loss"] == pytest.approx(logged[f"{TASK}/main"] + FOOL_WEIGHT * logged[f"{TASK}/fool"])


def test_the_generator_side_term_trains_the_main_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the head's term gone, only ``fool`` (through the critic) can move the backbone."""
    trainer = make_trainer(tmp_path / "r", steps=2)
    task = trainer.model.runtimes[0].task
    task.loss_weights = {"main": 0.0, "fool": 1.0}
    backbone = trainer.model.backbone
    before = snapshot(backbone)
    images, _ = next(iter(trainer.stream.batches(0)))
    trainer.train_step(images)
    weights = [key for key in before if key.endswith("weight")]
    assert any(not torch.equal(before[key], backbone.state_dict()[key]) for key in weights)


def test_resume_restores_aux_modules_and_their_optimizer_and_continues_exactly(tmp_path: Path) -> None:
    run = tmp_path / "r"
    straight = make_trainer(run, steps=3, checkpoint_every=1)
    straight.train()
    checkpoint_path(run, 3).unlink()  # as if the run had died right after step 2's checkpoint
    saved = read_checkpoint(checkpoint_path(run, 2))
    assert any(key.startswith(f"aux/{TASK}/") for key in saved.tensors)
    assert any(key.startswith(f"optim/aux/{TASK}/") for key in saved.tensors)

    resumed = make_trainer(run, steps=3, resume=True)
    assert resumed.step == 2
    state = resumed.model.aux_modules[TASK].state_dict()
    assert state.keys() == saved.module_state(f"aux/{TASK}").keys() == {"critic.weight", "critic.bias"}
    for key, value in saved.module_state(f"aux/{TASK}").items():
        assert torch.equal(state[key], value), key
    restored = resumed.aux_optimizers[TASK].state_dict()["state"]
    assert len(restored) == len(list(critic_of(resumed).parameters()))
    for index, per_parameter in restored.items():
        assert torch.equal(per_parameter["momentum_buffer"], saved.tensors[f"optim/aux/{TASK}/{index}/momentum_buffer"])

    resumed.train()
    # Resumed to the same budget, the run ends exactly where the uninterrupted one did, critic and all.
    torch.testing.assert_close(resumed.model.state_dict(), straight.model.state_dict(), rtol=0, atol=0)
    ours, theirs = resumed.aux_optimizers[TASK].state_dict(), straight.aux_optimizers[TASK].state_dict()
    torch.testing.assert_close(ours["state"], theirs["state"], rtol=0, atol=0)
