"""The conformance kit (``ssl_engine.testing``): a correct toy task passes; each deliberately broken one fails with
a message naming the rule it breaks."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ssl_engine.testing as kit
from ssl_engine.backbones.base import Backbone
from ssl_engine.hookspecs import hookimpl
from ssl_engine.images import normalize
from ssl_engine.randomness import BatchRandom
from ssl_engine.settings import TaskSetting
from ssl_engine.task import PretextBatch, PretextTask, Representation, TaskOutput, accuracy
from ssl_engine.testing import ConformanceError, check_pretext_task


class FlipToy(PretextTask):
    """A correct task: was the image turned upside down? (flipped with probability ``probability``)."""

    name = "flip_toy"
    summary = "was the image turned upside down?"
    paper = "(a toy of the kit's tests)"
    views = 1
    min_image_size = 8
    settings = (TaskSetting("probability", float, 0.5, "chance an image is flipped", minimum=0.0, maximum=1.0),)

    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"head": self.context.make_head(self.context.feature_dim, 2)})

    def flips(self, images: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        return random.bernoulli(self.hparams["probability"])  # (B,)

    def pseudo_labels(self, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        flipped = self.flips(images, random)
        views = torch.where(flipped[:, None, None, None], images.flip(2), images)
        return PretextBatch(normalize(views), flipped.long())

    def features(self, backbone: Backbone, inputs: torch.Tensor) -> torch.Tensor:
        return backbone.pooled(inputs)  # (N, D)

    def forward(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch
    ) -> TaskOutput:
        logits = modules["head"](self.features(backbone, batch.inputs))  # (B, 2)
        loss = self.context.loss_fn(logits.float(), batch.targets)
        return TaskOutput({"flip": loss}, {"accuracy": accuracy(logits, batch.targets)}, logits)


def broken(base: type[PretextTask] = FlipToy, **attributes: Any) -> type[PretextTask]:
    """A subclass of ``base`` with some attributes or methods replaced (its own task name)."""
    return type("Broken", (base,), {"name": "broken", **attributes})


def fails(task_class: type[PretextTask], rule: str, *, check: str | None = None, **options: Any) -> str:
    """Run the kit (or one check) on ``task_class``; assert it fails with ``rule`` and return the message."""
    with pytest.raises(ConformanceError) as caught:
        if check is None:
            check_pretext_task(task_class, **options)
        else:
            kit.CHECKS[check](kit.prepare(task_class, **options))
    error = caught.value
    assert error.rule == rule, str(error)
    assert str(error).startswith(f"rule {rule!r}: task {task_class.name!r} ")
    assert rule in kit.RULES
    return str(error)


# --- tasks that pass -------------------------------------------------------------------------------------------------
def test_a_correct_task_passes() -> None:
    check_pretext_task(FlipToy)


def test_the_reference_task_passes() -> None:
    check_pretext_task(kit.ReferenceTask)


def test_options_reach_the_task() -> None:
    check_pretext_task(FlipToy, image_size=24, batch=6, settings={"probability": "0.7"}, head="mlp")
    check_pretext_task(FlipToy, loss="label_smoothing")
    message = fails(FlipToy, "build", settings={"probability": 2})
    assert "flip_toy.probability" in message


def test_a_task_using_its_plugins_own_head_is_checked_through_that_plugin() -> None:
    class Tiny(FlipToy):
        name = "tiny_head_toy"
        default_head = "tiny"

    class TinyPlugin:
        @hookimpl
        def register_tasks(self, register):  # type: ignore[no-untyped-def]
            register(Tiny)

        @hookimpl
        def register_heads(self, register):  # type: ignore[no-untyped-def]
            register("tiny", lambda i, o: nn.Linear(i, o), kind="classifier")

    assert "unknown head 'tiny'" in fails(Tiny, "build")
    check_pretext_task(Tiny, plugin=TinyPlugin())


def test_a_task_that_cannot_share_the_backbone_passes_when_the_mix_is_refused() -> None:
    loner = broken(shares_backbone=False)
    kit.check_mix(loner)


def test_a_task_with_a_working_aux_module_passes() -> None:
    class Critic(FlipToy):
        name = "critic_toy"

        def build_aux_modules(self) -> nn.ModuleDict:
            return nn.ModuleDict({"critic": nn.Linear(2, 1)})

        def aux_losses(self, aux: nn.ModuleDict, batch: PretextBatch, output: TaskOutput) -> dict[str, torch.Tensor]:
            assert output.predictions is not None
            return {"critic": aux["critic"](output.predictions.detach()).square().mean()}

    check_pretext_task(Critic)


def test_the_callers_global_random_state_is_left_alone() -> None:
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    threads = torch.get_num_threads()
    check_pretext_task(FlipToy)
    after = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    assert torch.equal(after[0], torch.rand(3)) and after[1:] == (random.random(), np.random.rand())
    assert torch.get_num_threads() == threads


def test_every_rule_is_documented() -> None:
    assert kit.__doc__ is not None
    for rule in kit.RULES:
        assert f"``{rule}``" in kit.__doc__


def test_the_kit_refuses_what_is_not_a_task_class() -> None:
    with pytest.raises(TypeError, match="PretextTask subclasses"):
        check_pretext_task(nn.Linear)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        check_pretext_task(FlipToy, batch=1)


# --- declaration -----------------------------------------------------------------------------------------------------
def test_invalid_declaration() -> None:
    assert "views" in fails(broken(views=0), "declaration")


def test_missing_paper() -> None:
    assert "`paper`" in fails(broken(paper=""), "description")


def test_accepting_images_below_the_minimum() -> None:
    def check_images(cls: type, image_size: int, channels_are_color: bool = True) -> None:
        return None

    message = fails(broken(check_images=classmethod(check_images)), "image-size")
    assert "accepts 7 px images" in message


def test_a_plugin_that_does_not_register_the_task() -> None:
    class Empty:
        @hookimpl
        def register_heads(self, register):  # type: ignore[no-untyped-def]
            pass

    assert "not registered" in fails(FlipToy, "registration", plugin=Empty())


# --- pseudo-labels ---------------------------------------------------------------------------------------------------
def test_wrong_label_shape() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        batch = FlipToy.pseudo_labels(self, images, random)
        return PretextBatch(batch.inputs, batch.targets[:-1])

    message = fails(broken(pseudo_labels=pseudo_labels), "targets-shape")
    assert "returned targets of shape (3,) for a batch of 4 with 1 view(s); expected (4,)" in message


def test_views_not_stacked_on_the_batch_axis() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        stacked = torch.stack([normalize(images), normalize(images.flip(3))], dim=1)  # (B, 2, 3, S, S)
        return PretextBatch(stacked, torch.zeros(2 * len(images), dtype=torch.long), views=2)

    assert "expected (8, C, h, w)" in fails(broken(views=2, pseudo_labels=pseudo_labels), "inputs-shape")


def test_undeclared_views() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        views = torch.cat([images, images.flip(3)], dim=1).reshape(-1, *images.shape[1:])  # (B*2, 3, S, S)
        return PretextBatch(normalize(views), torch.arange(2).repeat(len(images)), views=2)

    assert "declares views=1" in fails(broken(pseudo_labels=pseudo_labels), "views")


def test_float_classification_targets() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        batch = FlipToy.pseudo_labels(self, images, random)
        return PretextBatch(batch.inputs, batch.targets.float())

    assert "torch.float32, expected int64" in fails(broken(pseudo_labels=pseudo_labels), "targets-dtype")


def test_inputs_not_normalised() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        return PretextBatch(images.flip(2), random.randint(0, 2))

    assert "normalize" in fails(broken(pseudo_labels=pseudo_labels), "inputs-normalised")


def test_images_modified_in_place() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        return PretextBatch(normalize(images.mul_(0.5)), random.randint(0, 2))

    assert "in place" in fails(broken(pseudo_labels=pseudo_labels), "images-untouched")


def test_extras_on_another_device() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        batch = FlipToy.pseudo_labels(self, images, random)
        batch.extras["mask"] = torch.zeros(len(images), device="meta")
        return batch

    assert "extras['mask'] on meta" in fails(broken(pseudo_labels=pseudo_labels), "device")


def test_pseudo_labels_returning_a_tuple() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> Any:
        batch = FlipToy.pseudo_labels(self, images, random)
        return batch.inputs, batch.targets

    assert "returned tuple" in fails(broken(pseudo_labels=pseudo_labels), "pseudo-labels")


# --- determinism -----------------------------------------------------------------------------------------------------
def test_labels_not_deterministic() -> None:
    def flips(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        return torch.rand(len(images)) < 0.5  # the global RNG, not the BatchRandom

    message = fails(broken(flips=flips), "deterministic")
    assert "same seed, step and stream" in message and "BatchRandom" in message


def test_labels_from_pythons_random_module() -> None:
    def flips(self: FlipToy, images: torch.Tensor, random_: BatchRandom) -> torch.Tensor:
        return torch.tensor([random.random() < 0.5 for _ in range(len(images))])

    fails(broken(flips=flips), "deterministic")


def test_draws_that_never_reach_the_labels() -> None:
    def flips(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        random.rand()
        return torch.arange(len(images)) % 2 == 0

    assert "never reach" in fails(broken(flips=flips), "varies-with-step")


def test_draws_of_the_local_batch_break_the_global_batch_property() -> None:
    def flips(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        # Drawn for the local batch straight from the generator: every process would get the same numbers.
        return torch.rand(len(images), generator=random.generator) < 0.5

    assert "global_batch=4" in fails(broken(flips=flips), "global-batch")


# --- forward ---------------------------------------------------------------------------------------------------------
def test_no_gradient_to_the_backbone() -> None:
    def features(self: FlipToy, backbone: Backbone, inputs: torch.Tensor) -> torch.Tensor:
        return backbone.pooled(inputs).detach()

    message = fails(broken(features=features), "gradients-to-backbone")
    assert "no gradient to" in message and "detached" in message


def test_non_finite_loss() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        output = FlipToy.forward(self, backbone, modules, aux, batch)
        return TaskOutput({"flip": output.losses["flip"] / 0.0}, output.metrics, output.predictions)

    assert "non-finite loss term 'flip'" in fails(broken(forward=forward), "loss-finite")


def test_loss_not_reduced() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        logits = modules["head"](backbone.pooled(batch.inputs))
        per_image = nn.functional.cross_entropy(logits, batch.targets, reduction="none")
        return TaskOutput({"flip": per_image}, {"accuracy": accuracy(logits, batch.targets)}, logits)

    assert "shape (4,)" in fails(broken(forward=forward), "loss-scalar")


def test_no_loss_terms() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        output = FlipToy.forward(self, backbone, modules, aux, batch)
        return TaskOutput({}, output.metrics, output.predictions)

    fails(broken(forward=forward), "loss-terms")


def test_missing_pretext_metric() -> None:
    assert "declares metric 'top1'" in fails(broken(metric="top1"), "metric")


def test_metric_left_on_the_graph() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        output = FlipToy.forward(self, backbone, modules, aux, batch)
        return TaskOutput(output.losses, {"accuracy": output.losses["flip"]}, output.predictions)

    assert "detach" in fails(broken(forward=forward), "metric")


def test_targets_beyond_the_classes() -> None:
    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        batch = FlipToy.pseudo_labels(self, images, random)
        return PretextBatch(batch.inputs, batch.targets + 2)

    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        logits = modules["head"](backbone.pooled(batch.inputs))
        loss = logits.logsumexp(dim=1).mean()  # a loss that doesn't itself check the targets
        return TaskOutput({"flip": loss}, {"accuracy": accuracy(logits, batch.targets)}, logits)

    message = fails(broken(pseudo_labels=pseudo_labels, forward=forward), "targets-range")
    assert "targets in [2, 3] for 2 classes; expected [0, 1]" in message


def test_classification_without_logits() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        output = FlipToy.forward(self, backbone, modules, aux, batch)
        return TaskOutput(output.losses, output.metrics)

    fails(broken(forward=forward), "predictions")


def test_forward_that_raises() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        raise KeyError("decoder")

    assert "raised KeyError in forward" in fails(broken(forward=forward), "forward")


# --- aux -------------------------------------------------------------------------------------------------------------
class CriticBase(FlipToy):
    name = "critic_base"

    def build_aux_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"critic": nn.Linear(2, 1)})


def test_aux_loss_not_detached() -> None:
    def aux_losses(self: FlipToy, aux: Any, batch: PretextBatch, output: TaskOutput) -> dict[str, torch.Tensor]:
        assert output.predictions is not None
        return {"critic": aux["critic"](output.predictions).square().mean()}

    assert "detach" in fails(broken(CriticBase, aux_losses=aux_losses), "aux-only")


def test_aux_modules_never_trained() -> None:
    assert "never train" in fails(broken(CriticBase), "aux-trained")


# --- representation --------------------------------------------------------------------------------------------------
def test_representation_of_the_wrong_shape() -> None:
    class SpatialRepresentation(Representation):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.backbone(self.prepare(images))  # (B, D, h, w): not pooled

    def representation(self: FlipToy, backbone: Backbone, modules: nn.ModuleDict) -> Representation:
        return SpatialRepresentation(backbone)

    assert "expected (4, 256)" in fails(broken(representation=representation), "representation-shape")


# --- draw ------------------------------------------------------------------------------------------------------------
def test_draw_that_returns_a_tensor() -> None:
    def draw(self: FlipToy, images: torch.Tensor, batch: PretextBatch, output: TaskOutput | None) -> Any:
        return batch.inputs

    assert "returned Tensor from draw before training" in fails(broken(draw=draw), "draw")


# --- checkpoint ------------------------------------------------------------------------------------------------------
def test_state_kept_outside_the_modules() -> None:
    def __init__(self: FlipToy, context: Any) -> None:  # noqa: N807
        FlipToy.__init__(self, context)
        self.tint = torch.rand(3, 1, 1)  # from the global RNG, and not in any module: not in the checkpoint

    def pseudo_labels(self: FlipToy, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        batch = FlipToy.pseudo_labels(self, images, random)
        return PretextBatch(batch.inputs + self.tint.to(images.device), batch.targets)

    message = fails(broken(__init__=__init__, pseudo_labels=pseudo_labels), "checkpoint-roundtrip")
    assert "keep state in module buffers" in message


def test_learned_state_kept_outside_the_modules() -> None:
    def forward(self: FlipToy, backbone: Backbone, modules: Any, aux: Any, batch: PretextBatch) -> TaskOutput:
        output = FlipToy.forward(self, backbone, modules, aux, batch)
        self.calls = getattr(self, "calls", 0) + 1  # a running statistic that a checkpoint can't hold
        return TaskOutput({"flip": output.losses["flip"] * self.calls}, output.metrics, output.predictions)

    assert "loss term 'flip'" in fails(broken(forward=forward), "checkpoint-roundtrip", check="checkpoint")


# --- mix -------------------------------------------------------------------------------------------------------------
def test_a_task_that_depends_on_the_other_tasks_of_the_run() -> None:
    def features(self: FlipToy, backbone: Backbone, inputs: torch.Tensor) -> torch.Tensor:
        # Reads the running batch-norm statistics, which every other task's forward moves too.
        running = sum(float(m.running_mean.sum()) for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
        return backbone.pooled(inputs) + running

    message = fails(broken(features=features), "mix-isolated", check="mix")
    assert "beside another task" in message


def test_the_kit_makes_a_small_trainer_of_the_engine(tmp_path: Path) -> None:
    trainer = kit.prepare(kit.ReferenceTask).trainer(tmp_path / "run", steps=2, seed=3)
    assert trainer.config.seed == 3 and trainer.config.steps == 2
    images, _ = next(iter(trainer.stream.batches(0)))
    assert images.shape == (8, 3, 32, 32)
    logged = trainer.train_step(images)
    assert math.isfinite(logged[f"{kit.REFERENCE_TASK}/loss"])
    trainer.train()
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*.safetensors"))
