"""``sslx show``'s pictures checked on their pixels and geometry: words apart, titles wrapped, labels in the task's
units, wrong predictions crossed out in red, the jigsaw puzzle as a 3x3 grid whose shuffle is the permutation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ssl_engine.drawing import (
    MARGIN,
    MARK,
    RIGHT,
    WORD_GAP,
    WRONG,
    PictureCell,
    augmentation_notes,
    default_drawing,
    draw_text,
    picture_sheet,
    text_width,
    tile_grid,
    wrap_text,
)
from ssl_engine.plugins import get_host
from ssl_engine.task import PretextTask, TaskOutput
from ssl_engine.testing import block_images, pretext_batch, task_instance

TITLE = "jigsaw: predict the permutation that shuffled the 3x3 tiles of each image"


@dataclass
class Batch:
    """A stand-in pretext batch: ``views`` views per image, class targets."""

    inputs: torch.Tensor
    targets: torch.Tensor
    views: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def resolutions(self) -> list[torch.Tensor]:
        return [self.inputs]


def ink_columns(picture: Image.Image) -> np.ndarray:
    """Which columns of the picture hold any non-white pixel."""
    return (np.asarray(picture.convert("L")) < 200).any(axis=0)


def gaps(columns: np.ndarray) -> list[int]:
    """Widths of the white runs between inked columns."""
    inked = np.flatnonzero(columns)
    return [int(b - a - 1) for a, b in zip(inked[:-1], inked[1:], strict=True) if b - a > 1]


def colour_count(picture: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> int:
    left, top, right, bottom = box
    pixels = np.asarray(picture)[top:bottom, left:right]
    return int((pixels == np.array(colour, dtype=np.uint8)).all(axis=-1).sum())


def installed(name: str) -> type[PretextTask]:
    registry = get_host().registry
    if name not in registry.names("task"):
        pytest.skip(f"the {name} plugin is not installed")
    return registry.get("task", name).obj  # type: ignore[no-any-return]


# --- text ------------------------------------------------------------------------------------------------------------
def test_words_are_drawn_apart() -> None:
    assert text_width("that shuffled") >= text_width("thatshuffled") + WORD_GAP
    canvas = Image.new("RGB", (200, 14), "white")
    draw_text(ImageDraw.Draw(canvas), (0, 0), "that shuffled the tiles")
    spaces = [gap for gap in gaps(ink_columns(canvas)) if gap >= WORD_GAP]
    assert len(spaces) == 3  # one clear gap per space; the gaps inside words are narrower


def test_a_title_wraps_to_the_sheet_and_keeps_every_word() -> None:
    cell = PictureCell(Image.new("RGB", (64, 64), "gray"))
    picture = picture_sheet([[cell, cell, cell]], TITLE)
    lines = picture.info["title"]
    assert len(lines) > 1 and " ".join(lines) == TITLE
    assert all(text_width(line) <= picture.width - 2 * MARGIN for line in lines)
    assert wrap_text("a\nb", 100) == ["a", "b"]


def test_a_caption_is_drawn_under_the_rows() -> None:
    cell = PictureCell(Image.new("RGB", (64, 64), "gray"))
    plain = picture_sheet([[cell]], "t")
    captioned = picture_sheet([[cell]], "t", caption="Grey: colour dropped. Each tile is normalised on its own.")
    bottom = captioned.info["cells"][0][0][3]
    assert captioned.height > plain.height
    assert (np.asarray(captioned.convert("L"))[bottom:] < 200).any()


# --- labels and verdicts ----------------------------------------------------------------------------------------------
def two_images_two_views() -> tuple[torch.Tensor, Batch]:
    images = torch.full((2, 3, 16, 16), 0.5)
    views = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4  # greyish
    return images, Batch(views, torch.tensor([0, 1, 2, 3]), views=2)


def test_labels_are_in_the_tasks_units_and_wrong_predictions_are_crossed_out_in_red() -> None:
    images, batch = two_images_two_views()
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), 4).float()  # the last view: wrong
    before = default_drawing(images, batch, None, "t", labels=lambda k: f"{90 * k}°")
    assert before.info["labels"] == [["", "0°", "90°"], ["", "180°", "270°"]]
    after = default_drawing(images, batch, logits, "t", labels=lambda k: f"{90 * k}°")
    assert after.info["labels"][1][2] == "270°\nsaid: 0°"
    right, wrong = after.info["cells"][1][1], after.info["cells"][1][2]
    assert colour_count(after, wrong, WRONG) > 64  # the cross's diagonals and the frame
    left, top, right_edge, bottom = wrong
    centre = (left + right_edge) // 2, (top + bottom) // 2
    assert colour_count(after, (centre[0] - 2, centre[1] - 2, centre[0] + 2, centre[1] + 2), WRONG) > 0  # crossed
    assert colour_count(after, right, WRONG) == 0
    assert colour_count(after, right, RIGHT) >= 4 * 60 * MARK  # a green frame
    assert colour_count(before, wrong, WRONG) == 0  # no verdicts before a run


def test_per_image_targets_put_the_verdict_on_the_original() -> None:
    images, batch = two_images_two_views()
    batch.targets = torch.tensor([3, 5])
    logits = torch.nn.functional.one_hot(torch.tensor([3, 4]), 8).float()
    picture = default_drawing(images, batch, logits, "t", labels=lambda k: ["top", "left", "a", "b", "c", "d"][k])
    assert picture.info["labels"][0][0] == "b\nsaid: b" and picture.info["labels"][1][0] == "d\nsaid: c"
    assert colour_count(picture, picture.info["cells"][0][0], WRONG) == 0
    assert colour_count(picture, picture.info["cells"][1][0], WRONG) > 64


def test_notes_say_what_was_done_to_each_view() -> None:
    images, batch = two_images_two_views()
    drawn = {
        "gray": torch.tensor([[True, False], [False, False]]),
        "flips": torch.tensor([[True, True], [False, True]]),
    }
    picture = default_drawing(images, batch, None, "t", notes=augmentation_notes(drawn))
    assert picture.info["labels"][0][1] == "class 0\nflipped, grey"
    assert picture.info["labels"][1][1] == "class 2"


def test_a_long_label_wraps_inside_its_column() -> None:
    images, batch = two_images_two_views()
    picture = default_drawing(images, batch, None, "t", labels=lambda k: "bottom-right of the centre patch")
    right_edge = picture.info["cells"][0][1][2]
    following = picture.info["cells"][0][2][0]
    label_top = picture.info["cells"][0][1][3]
    band = np.asarray(picture.convert("L"))[label_top : label_top + 36, right_edge:following]
    assert (band >= 200).all()  # nothing written in the gap between the two columns


def test_tile_grid_places_tiles_row_major_with_gaps() -> None:
    tiles = [Image.new("RGB", (10, 10), (20 * k, 0, 0)) for k in range(9)]
    grid = tile_grid(tiles, 3, gap=4)
    assert grid.size == (38, 38)
    for k in range(9):
        row, column = divmod(k, 3)
        assert grid.getpixel((column * 14 + 5, row * 14 + 5)) == (20 * k, 0, 0)
    assert grid.getpixel((11, 5)) == (255, 255, 255)  # the gap


# --- the installed tasks' pictures ---------------------------------------------------------------------------------
def test_rotation_labels_are_degrees() -> None:
    task = task_instance(installed("rotation"))
    images = block_images(2, 32)
    picture = task.draw(images, pretext_batch(task, images), None)
    assert picture.info["labels"][0][1:] == ["0°", "90°", "180°", "270°"]


def test_relpatch_labels_are_positions() -> None:
    task = task_instance(installed("relpatch"), image_size=64)
    images = block_images(4, 64)
    batch = pretext_batch(task, images)
    picture = task.draw(images, batch, None)
    names = ["top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right"]
    for row, target in enumerate(batch.targets.tolist()):
        assert picture.info["labels"][row][0] == names[target]


def jigsaw_picture(correct: bool | None) -> tuple[Image.Image, int]:
    task = task_instance(installed("jigsaw"), image_size=64)
    images = block_images(2, 64, block=2)
    batch = pretext_batch(task, images)
    output = None
    if correct is not None:
        guess = batch.targets if correct else (batch.targets + 1) % task.hparams["permutations"]
        output = TaskOutput({}, predictions=torch.nn.functional.one_hot(guess, task.hparams["permutations"]).float())
    return task.draw(images, batch, output), task.grid.tile


def test_jigsaw_shows_a_3x3_grid_shuffled_by_the_permutation() -> None:
    picture, tile = jigsaw_picture(None)
    cells = picture.info["cells"][0]
    assert len(cells) == 3  # the image's cells, the tiles solved, the tiles shuffled
    side = 72  # 18 px tiles enlarged 4 times (to at least 64 px)
    assert tile == 18
    solved, shuffled = (picture.crop(box) for box in cells[1:3])
    assert solved.size == shuffled.size == (3 * side + 2 * 8, 3 * side + 2 * 8)
    assert picture.info["labels"][0][2].startswith("permutation ")
    order = [int(n) - 1 for n in picture.info["labels"][0][2].split("\n")[1].replace("/", " ").split()]
    assert sorted(order) == list(range(9))
    pitch = side + 8
    for position, cell in enumerate(order):  # the tile at each input position is its cell's tile, moved
        below_number = (0, 16, side, side)  # (the number box covers the top-left corner)
        moved = shuffled.crop((position % 3 * pitch, position // 3 * pitch, position % 3 * pitch + side,
                               position // 3 * pitch + side)).crop(below_number)  # fmt: skip
        home = solved.crop((cell % 3 * pitch, cell // 3 * pitch, cell % 3 * pitch + side,
                            cell // 3 * pitch + side)).crop(below_number)  # fmt: skip
        assert np.array_equal(np.asarray(moved), np.asarray(home))
    white = np.asarray(shuffled)[:, side : side + 8]
    assert (white == 255).all()  # a gap between the columns of tiles


def test_jigsaw_puts_the_tiles_back_and_crosses_out_a_wrong_permutation() -> None:
    right, _ = jigsaw_picture(True)
    wrong, _ = jigsaw_picture(False)
    for picture in (right, wrong):
        assert len(picture.info["cells"][0]) == 4
    solved_box, put_back_box = right.info["cells"][0][1], right.info["cells"][0][3]
    inset = MARK + 1
    solved = np.asarray(right.crop(solved_box))[inset:-inset, inset:-inset]
    put_back = np.asarray(right.crop(put_back_box))[inset:-inset, inset:-inset]
    assert np.array_equal(solved, put_back)  # the right permutation solves the puzzle
    assert colour_count(right, put_back_box, WRONG) == 0
    assert colour_count(wrong, wrong.info["cells"][0][3], WRONG) > 100
    assert wrong.info["labels"][0][3].startswith("said ")
