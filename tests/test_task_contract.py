"""The contract test: every installed pretext task, run on small CPU inputs (the timm way)."""

from __future__ import annotations

import pytest
import torch

from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.images import to_float
from ssl_engine.plugins import get_host
from ssl_engine.randomness import BatchRandom
from ssl_engine.task import ImageSizeError, PretextTask
from ssl_engine.train.model import PretrainModel

REGISTRY = get_host().registry
TASKS = REGISTRY.names("task")
BATCH = 4


def test_the_project_tasks_are_installed() -> None:
    assert {"rotation", "jigsaw"} <= set(TASKS)


def images_for(task_class: type[PretextTask]) -> torch.Tensor:
    size = max(task_class.min_image_size, 32)
    dataset = ShapesDataset("train", size, size=BATCH)
    return to_float(torch.stack([dataset[i][0] for i in range(BATCH)]))  # (B, 3, S, S)


def build(name: str) -> tuple[PretrainModel, torch.Tensor]:
    task_class = REGISTRY.get("task", name).obj
    images = images_for(task_class)
    torch.manual_seed(0)
    model = PretrainModel(PretrainConfig([TaskSpec(name)]), REGISTRY, images.shape[-1])
    return model, images


@pytest.mark.parametrize("name", TASKS)
def test_declaration(name: str) -> None:
    task_class = REGISTRY.get("task", name).obj
    task_class.check_declaration()
    assert task_class.summary and task_class.paper
    with pytest.raises(ImageSizeError, match=str(task_class.min_image_size)):
        task_class.check_images(task_class.min_image_size - 1)


@pytest.mark.parametrize("name", TASKS)
def test_pseudo_labels_shapes_and_determinism(name: str) -> None:
    model, images = build(name)
    [runtime] = model.runtimes
    batch = runtime.task.pseudo_labels(images, BatchRandom(0, 7, name, BATCH))
    again = runtime.task.pseudo_labels(images, BatchRandom(0, 7, name, BATCH))
    assert batch.inputs.shape[0] == BATCH * batch.views
    assert batch.views in (1, runtime.task.views)
    assert torch.isfinite(batch.inputs).all()
    assert torch.equal(batch.inputs, again.inputs) and torch.equal(batch.targets, again.targets)
    if runtime.task.loss_kind == "classification":
        assert batch.targets.dtype == torch.long
        assert batch.targets.shape[0] in (BATCH, BATCH * batch.views)
        logits = runtime.task.forward(model.backbone, runtime.modules, runtime.aux, batch).predictions
        assert logits is not None
        assert batch.targets.min() >= 0 and batch.targets.max() < logits.shape[1]


@pytest.mark.parametrize("name", TASKS)
def test_pseudo_labels_depend_only_on_place_in_global_batch(name: str) -> None:
    """Two processes with half the batch each see exactly what one process with the whole batch sees."""
    model, images = build(name)
    [runtime] = model.runtimes
    whole = runtime.task.pseudo_labels(images, BatchRandom(3, 11, name, BATCH))
    half = BATCH // 2
    parts = [
        runtime.task.pseudo_labels(
            images[rank * half : (rank + 1) * half],
            BatchRandom(3, 11, name, half, global_batch=BATCH, offset=rank * half),
        )
        for rank in range(2)
    ]
    assert torch.allclose(torch.cat([p.inputs for p in parts]), whole.inputs, atol=1e-6)
    if whole.targets.shape[0] in (BATCH, BATCH * whole.views):
        assert torch.equal(torch.cat([p.targets for p in parts]), whole.targets)


@pytest.mark.parametrize("name", TASKS)
def test_loss_is_finite_and_gradients_reach_the_backbone(name: str) -> None:
    model, images = build(name)
    [runtime] = model.runtimes
    model.train()
    batch = runtime.task.pseudo_labels(images, BatchRandom(0, 0, name, BATCH))
    output = runtime.task.forward(model.backbone, runtime.modules, runtime.aux, batch)
    assert output.losses and all(torch.isfinite(term) and term.ndim == 0 for term in output.losses.values())
    assert runtime.task.metric in output.metrics
    runtime.task.weighted_total(output.losses).backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    for term in runtime.task.aux_losses(runtime.aux, batch, output).values():
        assert torch.isfinite(term)


@pytest.mark.parametrize("name", TASKS)
def test_representation_gives_one_vector_per_image(name: str) -> None:
    model, images = build(name)
    features = model.representation().eval()(images)
    assert features.shape == (BATCH, model.representation().feature_dim)
    assert torch.isfinite(features).all()
