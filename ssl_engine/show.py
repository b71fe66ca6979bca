"""Pictures of what a pretext task asks the network: ``sslx show``.

Each row is one image: the original, then its views as the network sees them (each view rescaled to [0, 1] for
display), captioned with the pseudo-label and, after a run, the model's prediction. Tasks draw themselves through
:meth:`ssl_engine.task.PretextTask.draw`; this module is its default.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.registry import Registry, UnknownNameError
from ssl_engine.run import load_run
from ssl_engine.task import PretextBatch
from ssl_engine.train.model import PretrainModel, resolve_image_size

CELL = 64
CAPTION = 14


def to_picture(image: torch.Tensor, size: int = CELL) -> Image.Image:
    """One view ``(C, h, w)`` (any range, 1-3 channels) as an RGB picture of ``size`` px, min-max rescaled."""
    view = image.detach().float().cpu()
    view = (view - view.min()) / (view.max() - view.min() + 1e-8)
    if view.shape[0] == 1:
        view = view.expand(3, -1, -1)
    elif view.shape[0] == 2:  # e.g. ab channels: show them in red and blue
        view = torch.stack([view[0], 0.5 * (view[0] + view[1]), view[1]])
    array = (view[:3].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array).resize((size, size), Image.Resampling.NEAREST)


def _caption(targets: torch.Tensor, predictions: torch.Tensor | None, index: int) -> str:
    text = f"t={int(targets[index])}" if targets.dtype == torch.long and targets.ndim == 1 else ""
    if predictions is not None and predictions.ndim == 2 and predictions.shape[0] == targets.shape[0]:
        text += f" p={int(predictions[index].argmax())}"
    return text


def default_drawing(
    images: torch.Tensor, batch: PretextBatch, predictions: torch.Tensor | None, title: str
) -> Image.Image:
    """Rows of original + views with pseudo-labels (and predicted classes or predicted images when given).

    Args:
        images: originals ``(N, 3, S, S)`` in [0, 1].
        batch: the task's pretext batch for those images.
        predictions: the task's ``TaskOutput.predictions`` (logits ``(N*views or N, K)`` or images), if any.
        title: drawn on top.
    """
    count, views = images.shape[0], batch.views
    per_view = batch.targets.ndim >= 1 and batch.targets.shape[0] == count * views
    per_sample = batch.targets.ndim >= 1 and batch.targets.shape[0] == count and not per_view
    image_predictions = predictions is not None and predictions.ndim == 4
    columns = 1 + views + (views if image_predictions else 0)
    canvas = Image.new("RGB", (columns * (CELL + 4) + 4, CAPTION + count * (CELL + CAPTION + 4) + 4), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((4, 1), title, fill="black", font=font)
    for row in range(count):
        top = CAPTION + row * (CELL + CAPTION + 4) + 4
        canvas.paste(to_picture(images[row]), (4, top))
        if per_sample:
            draw.text((4, top + CELL), _caption(batch.targets, predictions, row), fill="black", font=font)
        for view in range(views):
            index = row * views + view
            left = 4 + (1 + view) * (CELL + 4)
            canvas.paste(to_picture(batch.inputs[index]), (left, top))
            if per_view:
                draw.text((left, top + CELL), _caption(batch.targets, predictions, index), fill="black", font=font)
            if image_predictions and predictions is not None and index < predictions.shape[0]:
                canvas.paste(to_picture(predictions[index]), (left + views * (CELL + 4), top))
    return canvas


def render(
    registry: Registry,
    *,
    run_dir: Path | None = None,
    task: str | None = None,
    data: str | None = None,
    image_size: int | None = None,
    count: int = 6,
    seed: int = 0,
) -> dict[str, Image.Image]:
    """Pictures of the pretext batches of a task (fresh) or of a run's tasks (with the model's predictions).

    Returns:
        task name -> picture.
    """
    if run_dir is not None:
        run = load_run(run_dir, registry)
        model, size, data = run.model, run.image_size, data or run.config.data
        runtimes = [r for r in model.runtimes if task is None or r.spec.name == task]
        if not runtimes:
            raise UnknownNameError("task of this run", str(task), [r.spec.name for r in model.runtimes])
    else:
        if task is None:
            raise ValueError("give --task NAME (or a RUN_DIR)")
        config = PretrainConfig([TaskSpec(task)])
        size = image_size or resolve_image_size(config, registry)
        torch.manual_seed(seed)
        model = PretrainModel(config, registry, size)
        runtimes = model.runtimes
    source = resolve_data(data or "shapes", registry, DataOptions())
    for runtime in runtimes:
        type(runtime.task).check_images(size, source.color)
    split = "val" if source.labelled else source.pretrain_split
    dataset = source.split(split, size)
    images = to_float(torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]))  # type: ignore[arg-type]
    pictures = {}
    model.eval()
    for runtime in runtimes:
        batch = runtime.task.pseudo_labels(images, BatchRandom(seed, 0, runtime.spec.name, len(images)))
        output = None
        if run_dir is not None:
            with torch.no_grad():
                output = runtime.task.forward(model.backbone, runtime.modules, runtime.aux, batch)
        pictures[runtime.spec.name] = runtime.task.draw(images, batch, output)
    return pictures
