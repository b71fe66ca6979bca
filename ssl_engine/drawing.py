"""Drawing pretext batches as pictures: the default of :meth:`ssl_engine.task.PretextTask.draw`.

Each row is one image: the original, then its views as the network sees them (each view rescaled to [0, 1] for
display, views of every resolution of a multi-crop batch), captioned with the pseudo-label and, after a run, the
model's prediction.
"""

from __future__ import annotations

from typing import Protocol

import torch
from PIL import Image, ImageDraw, ImageFont


class DrawableBatch(Protocol):
    """What drawing reads of a :class:`~ssl_engine.task.PretextBatch`."""

    targets: torch.Tensor
    views: int

    def resolutions(self) -> list[torch.Tensor]: ...


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
    images: torch.Tensor, batch: DrawableBatch, predictions: torch.Tensor | None, title: str
) -> Image.Image:
    """Rows of original + views with pseudo-labels (and predicted classes or predicted images when given).

    Args:
        images: originals ``(N, 3, S, S)`` in [0, 1].
        batch: the task's pretext batch for those images.
        predictions: the task's ``TaskOutput.predictions`` (logits ``(N*views or N, K)`` or images), if any.
        title: drawn on top.
    """
    count, views = images.shape[0], batch.views
    # (view tensor, row within it) of every view of every sample, across resolutions (multi-crop)
    places: list[list[tuple[torch.Tensor, int]]] = [[] for _ in range(count)]
    for tensor in batch.resolutions():
        per_sample = tensor.shape[0] // count if count else 0
        for row in range(count):
            places[row] += [(tensor, row * per_sample + v) for v in range(per_sample)]
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
            if view < len(places[row]):
                tensor, at = places[row][view]
                canvas.paste(to_picture(tensor[at]), (left, top))
            if per_view:
                draw.text((left, top + CELL), _caption(batch.targets, predictions, index), fill="black", font=font)
            if image_predictions and predictions is not None and index < predictions.shape[0]:
                canvas.paste(to_picture(predictions[index]), (left + views * (CELL + 4), top))
    return canvas
