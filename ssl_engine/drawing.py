"""Pictures of pretext batches for ``sslx show``: the layout every task's drawing shares.

A picture is a *sheet*: a title (wrapped to the sheet's width), optional column headings, rows of
:class:`PictureCell` (a picture with lines of text under it and, after a run, a verdict on the model's prediction:
a red cross and red text when it is wrong, a green frame and green text when it is right) and a caption under
everything saying what the views show (why some are grey or noisy). :func:`picture_sheet` lays it out;
:func:`default_drawing` (what :meth:`ssl_engine.task.PretextTask.draw` does unless a task overrides it) fills it
with the original and its views, each labelled in the task's own units through ``labels``; :func:`tile_grid`
assembles tiles into a grid (a jigsaw puzzle, patches at their places).

Text is drawn word by word (:func:`draw_text`): Pillow's built-in font has spaces 2 px wide, which read as no space
at all ("thatshuffled"); words here are :data:`WORD_GAP` px apart.

Each sheet records its geometry in ``picture.info``: ``"cells"`` (per row, each cell's picture box ``(left, top,
right, bottom)``), ``"labels"`` (per row, each cell's text) and ``"title"`` (the title's lines), so tests can check
a picture on its pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image, ImageDraw, ImageFont


class DrawableBatch(Protocol):
    """What drawing reads of a :class:`~ssl_engine.task.PretextBatch`."""

    targets: torch.Tensor
    views: int

    def resolutions(self) -> list[torch.Tensor]: ...


class AugmentedBatch(DrawableBatch, Protocol):
    """A drawable batch whose ``extras`` record what the augmentation did to each view."""

    @property
    def extras(self) -> Mapping[str, torch.Tensor]: ...


CELL = 64
"""Side in px of a view in a sheet (views are enlarged or shrunk to it)."""
MARGIN = 4
"""Space around the sheet and between its cells, px."""
LINE = 12
"""Height of a line of text, px."""
WORD_GAP = 4
"""Space between two words, px (the font's own space is 2 px)."""
WRONG = (214, 0, 0)
"""Colour of a wrong prediction's cross and text."""
RIGHT = (0, 135, 0)
"""Colour of a right prediction's frame and text."""
MARK = 2
"""Width in px of the lines of a cross or a frame."""
MIN_WIDTH = MARGIN + 3 * (CELL + MARGIN)
"""Narrowest sheet, px: room for a title of a few words per line."""

Colour = str | tuple[int, int, int]


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def text_width(text: str) -> int:
    """Width in px of one line of ``text`` as :func:`draw_text` draws it."""
    words = text.split(" ")
    return round(sum(_font().getlength(word) for word in words)) + WORD_GAP * (len(words) - 1)


def draw_text(pen: ImageDraw.ImageDraw, at: tuple[int, int], text: str, fill: Colour = "black") -> None:
    """One line of ``text`` with its top-left corner at ``at``, words :data:`WORD_GAP` px apart."""
    left, top = at
    for word in text.split(" "):
        if word:
            pen.text((left, top), word, fill=fill, font=_font())
        left += round(_font().getlength(word)) + WORD_GAP


def wrap_text(text: str, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` px at spaces (a longer word gets a line of its own);
    ``\\n`` starts a new line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and text_width(candidate) > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return lines


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


def tile_grid(
    tiles: Sequence[Image.Image | None], columns: int, *, gap: int = MARGIN, numbers: Sequence[str] = ()
) -> Image.Image:
    """Equal-sized tile pictures in a grid, row-major, ``gap`` px of white between them.

    Args:
        tiles: the pictures (all of the first's size); ``None`` leaves its place white.
        columns: tiles per row.
        gap: px between tiles.
        numbers: text written in each tile's top-left corner (black on a white box), e.g. the cell a tile was cut
            from; none when empty.
    """
    side_w, side_h = next(t.size for t in tiles if t is not None)
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * side_w + (columns - 1) * gap, rows * side_h + (rows - 1) * gap), "white")
    pen = ImageDraw.Draw(grid)
    for index, tile in enumerate(tiles):
        left, top = (index % columns) * (side_w + gap), (index // columns) * (side_h + gap)
        if tile is not None:
            grid.paste(tile, (left, top))
        if index < len(numbers) and numbers[index]:
            pen.rectangle((left, top, left + text_width(numbers[index]) + 3, top + LINE - 1), fill="white")
            draw_text(pen, (left + 2, top), numbers[index])
    return grid


@dataclass(frozen=True)
class PictureCell:
    """One cell of a sheet: a picture with text under it.

    Attributes:
        picture: what is shown (``None``: an empty cell).
        label: the text under the picture, in the task's units (``\\n`` separates lines), e.g. ``"90°"``.
        verdict: after a run, whether the model's prediction for this cell is right (a green frame, the label in
            green) or wrong (a red cross over the picture, the label in red); ``None`` before a run.
    """

    picture: Image.Image | None
    label: str = ""
    verdict: bool | None = None


def mark_verdict(canvas: Image.Image, box: tuple[int, int, int, int], right: bool) -> None:
    """A wrong prediction's red cross over ``box`` (``(left, top, right, bottom)``, inclusive), or a right
    one's green frame around it."""
    pen = ImageDraw.Draw(canvas)
    left, top, right_edge, bottom = box
    if right:
        pen.rectangle(box, outline=RIGHT, width=MARK)
        return
    pen.rectangle(box, outline=WRONG, width=MARK)
    pen.line((left, top, right_edge, bottom), fill=WRONG, width=MARK)
    pen.line((left, bottom, right_edge, top), fill=WRONG, width=MARK)


def picture_sheet(
    rows: Sequence[Sequence[PictureCell]],
    title: str,
    *,
    header: Sequence[str] = (),
    caption: str = "",
) -> Image.Image:
    """Lay out rows of cells under a title, with column headings and a caption.

    Columns are as wide as their widest picture; a row is as tall as its tallest picture plus its longest label.
    The title and caption wrap to the sheet's width. ``picture.info`` holds ``"cells"`` (per row, each picture's
    box ``(left, top, right, bottom)``, right and bottom exclusive), ``"labels"`` and ``"title"`` (its lines).

    Args:
        rows: one list of cells per image.
        title: what the task asks, drawn on top.
        header: a heading per column (what each column shows), empty for none.
        caption: drawn under the rows: what the views show, why some look grey or noisy.
    """
    count = max((len(row) for row in rows), default=0)
    widths = [CELL] * max(count, len(header))
    for row in rows:
        for column, cell in enumerate(row):
            if cell.picture is not None:
                widths[column] = max(widths[column], cell.picture.width)
    # Labels wrap to their column, so a long one never runs under the next column's.
    labels = [[wrap_text(cell.label, widths[column]) if cell.label else [] for column, cell in enumerate(row)]
              for row in rows]  # fmt: skip
    heights = []
    for row, row_labels in zip(rows, labels, strict=True):
        tallest = max((cell.picture.height for cell in row if cell.picture is not None), default=CELL)
        heights.append((tallest, max(map(len, row_labels), default=0) * LINE))
    width = max(MIN_WIDTH, MARGIN + sum(w + MARGIN for w in widths))
    title_lines = wrap_text(title, width - 2 * MARGIN)
    header_lines = [wrap_text(name, w) for name, w in zip(header, widths, strict=False)]
    header_height = max((len(lines) for lines in header_lines), default=0) * LINE
    caption_lines = wrap_text(caption, width - 2 * MARGIN) if caption else []
    top = 1 + len(title_lines) * LINE + header_height + MARGIN
    height = top + sum(tall + text + MARGIN for tall, text in heights) + len(caption_lines) * LINE + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(canvas)
    for number, line in enumerate(title_lines):
        draw_text(pen, (MARGIN, 1 + number * LINE), line)
    lefts = [MARGIN + sum(w + MARGIN for w in widths[:column]) for column in range(len(widths))]
    for lines, left in zip(header_lines, lefts, strict=False):
        for number, line in enumerate(lines):
            draw_text(pen, (left, 1 + (len(title_lines) + number) * LINE), line)
    boxes: list[list[tuple[int, int, int, int]]] = []
    for row, row_labels, (tall, text) in zip(rows, labels, heights, strict=True):
        boxes.append([])
        for column, (cell, left) in enumerate(zip(row, lefts, strict=False)):
            picture = cell.picture
            w, h = picture.size if picture is not None else (widths[column], tall)
            boxes[-1].append((left, top, left + w, top + h))
            if picture is not None:
                canvas.paste(picture, (left, top))
            if cell.verdict is not None and picture is not None:
                mark_verdict(canvas, (left, top, left + w - 1, top + h - 1), cell.verdict)
            colour = "black" if cell.verdict is None else RIGHT if cell.verdict else WRONG
            for number, line in enumerate(row_labels[column]):
                draw_text(pen, (left, top + tall + number * LINE), line, colour)
        top += tall + text + MARGIN
    for number, line in enumerate(caption_lines):
        draw_text(pen, (MARGIN, top + number * LINE), line, (70, 70, 70))
    canvas.info["cells"] = boxes
    canvas.info["labels"] = [[cell.label for cell in row] for row in rows]
    canvas.info["title"] = title_lines
    return canvas


AUGMENTATION_NAMES = {
    "flips": "flipped",
    "jittered": "colour jitter",
    "gray": "grey",
    "blurred": "blurred",
    "solarized": "solarised",
}
"""How :func:`augmentation_notes` names each drawn parameter of :class:`~ssl_engine.api.ViewAugmentation`."""


def augmentation_notes(drawn: Mapping[str, torch.Tensor]) -> Callable[[int, int], str]:
    """``(image, view) -> "flipped, grey, ..."``: what a :class:`~ssl_engine.api.ViewAugmentation` did to each view
    (besides its random crop), from the parameters it drew (``PretextBatch.extras``, each ``(B, views)`` bool);
    for ``default_drawing(notes=...)``."""
    flags = {name: drawn[key].cpu() for key, name in AUGMENTATION_NAMES.items() if key in drawn}

    def notes(image: int, view: int) -> str:
        return ", ".join(name for name, flag in flags.items() if bool(flag[image, view]))

    return notes


def class_label(index: int) -> str:
    """The default label of a class index: ``"class 3"``."""
    return f"class {index}"


def _verdict(targets: torch.Tensor, predicted: torch.Tensor | None, index: int) -> bool | None:
    return None if predicted is None else bool(predicted[index] == targets[index])


def _label(
    labels: Callable[[int], str], targets: torch.Tensor, predicted: torch.Tensor | None, index: int, note: str
) -> str:
    lines = [labels(int(targets[index]))]
    if predicted is not None:
        lines.append(f"said: {labels(int(predicted[index]))}")
    if note:
        lines.append(note)
    return "\n".join(lines)


def default_drawing(
    images: torch.Tensor,
    batch: DrawableBatch,
    predictions: torch.Tensor | None,
    title: str,
    *,
    labels: Callable[[int], str] = class_label,
    header: Sequence[str] | None = None,
    caption: str = "",
    notes: Callable[[int, int], str] | None = None,
    size: int = CELL,
) -> Image.Image:
    """Rows of the original and its views with their pseudo-labels (and predicted classes or images when given).

    Integer targets (one per view or one per image) are written under their view (or the original) through
    ``labels``; after a run the predicted class follows (``said: ...``), and a wrong one is crossed out in red.

    Args:
        images: originals ``(N, 3, S, S)`` in [0, 1].
        batch: the task's pretext batch for those images.
        predictions: the task's ``TaskOutput.predictions`` (logits ``(N*views or N, K)`` or images), if any.
        title: drawn on top.
        labels: a class index in the task's units, e.g. ``lambda k: f"{90 * k}°"``; default ``"class k"``.
        header: a heading per column; default ``original``, then ``view 1 ...`` (``input`` for one view), then
            ``predicted`` columns for predicted images.
        caption: drawn under the rows: what the views show (e.g. why some are grey or noisy).
        notes: ``(image, view) -> text`` written under a view besides its label (e.g. ``"colour dropped"``).
        size: side in px of each picture.
    """
    count, views = images.shape[0], batch.views
    # (view tensor, row within it) of every view of every sample, across resolutions (multi-crop)
    places: list[list[tuple[torch.Tensor, int]]] = [[] for _ in range(count)]
    for tensor in batch.resolutions():
        per_sample = tensor.shape[0] // count if count else 0
        for row in range(count):
            places[row] += [(tensor, row * per_sample + v) for v in range(per_sample)]
    targets = batch.targets
    classes = targets.dtype == torch.long and targets.ndim == 1
    per_view = classes and targets.shape[0] == count * views
    per_sample = classes and targets.shape[0] == count and not per_view
    image_predictions = predictions is not None and predictions.ndim == 4
    predicted = None
    if predictions is not None and predictions.ndim == 2 and predictions.shape[0] == targets.shape[0] and classes:
        predicted = predictions.detach().argmax(dim=1).cpu()
    targets = targets.cpu()
    rows: list[list[PictureCell]] = []
    for row in range(count):
        original = to_picture(images[row], size)
        if per_sample:
            label, verdict = _label(labels, targets, predicted, row, ""), _verdict(targets, predicted, row)
            cells = [PictureCell(original, label, verdict)]
        else:
            cells = [PictureCell(original)]
        for view in range(views):
            index = row * views + view
            picture = None
            if view < len(places[row]):
                tensor, at = places[row][view]
                picture = to_picture(tensor[at], size)
            note = notes(row, view) if notes is not None else ""
            if per_view:
                label, verdict = _label(labels, targets, predicted, index, note), _verdict(targets, predicted, index)
                cells.append(PictureCell(picture, label, verdict))
            else:
                cells.append(PictureCell(picture, note))
        if image_predictions and predictions is not None:
            for view in range(views):
                index = row * views + view
                shown = to_picture(predictions[index], size) if index < predictions.shape[0] else None
                cells.append(PictureCell(shown))
        rows.append(cells)
    if header is None:
        names = ["input"] if views == 1 else [f"view {v + 1}" for v in range(views)]
        header = ["original", *names, *(["predicted"] * views if image_predictions else [])]
    return picture_sheet(rows, title, header=header, caption=caption)


TWO_VIEW_ROWS = "Rows are images 1, 2, ...; each view is a random crop, with what else was done to it under it. "
MATCHED_EMBEDDING = (
    "Under each view: its pair, the other view of its image, whose embedding it should match; after a run, the view "
    "nearest to it in embedding."
)


def two_view_drawing(
    images: torch.Tensor,
    batch: AugmentedBatch,
    predictions: torch.Tensor | None,
    title: str,
    caption: str = MATCHED_EMBEDDING,
) -> Image.Image:
    """The picture of a two-view (joint-embedding) task (SimCLR, Barlow Twins, VICReg): each image and its two
    views, labelled ``image n view k`` (the view each must be matched with), what was done to each view under it,
    and ``caption`` after the rows' explanation; after a run, the view the model picked (a wrong one in red).

    Args:
        images: originals ``(N, 3, S, S)`` in [0, 1].
        batch: the task's pretext batch: views ``(2N, 3, S, S)``, rows ``2b`` and ``2b + 1`` for image ``b``, the
            augmentation's record in ``extras``.
        predictions: the task's ``TaskOutput.predictions`` (logits ``(2N, 2N)``), if any.
        title: drawn on top.
        caption: what the labels mean for this task; by default, that each view's pair is the view whose embedding it
            should match (Barlow Twins, VICReg).
    """
    return default_drawing(
        images,
        batch,
        predictions,
        title,
        labels=lambda row: f"image {row // 2 + 1} view {row % 2 + 1}",
        caption=TWO_VIEW_ROWS + caption,
        notes=augmentation_notes(batch.extras),
    )
