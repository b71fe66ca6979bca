"""The jigsaw puzzle as ``sslx show`` draws it: the image cut into its 3x3 cells, the tiles in their cells, the
tiles shuffled as the network gets them and, after a run, put back by the predicted permutation.

Cells are numbered 1-9 row by row, and every tile carries the number of the cell it was cut from, so the
shuffled grid shows the permutation itself, and a wrong prediction puts numbers in the wrong places.
"""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw

from ssl_engine import api
from sslx_jigsaw.tiles import GRID, TILES, TileGrid

TILE_GAP = 8  # px between tiles in a drawn grid: the cut tiles do not touch
SMALLEST_SHOWN = 64  # a tile is enlarged (by a whole factor) to at least this many px
BOX = (255, 210, 0)  # outline of each cut tile on the original


def permutation_text(cells: list[int]) -> str:
    """The cells shown at the 9 input positions, 1-based, a row of the grid per group: ``"6 3 8 / 1 9 2 / ..."``."""
    numbers = [str(cell + 1) for cell in cells]
    return " / ".join(" ".join(numbers[row * GRID : (row + 1) * GRID]) for row in range(GRID))


def _original(image: torch.Tensor, grid: TileGrid, offsets: torch.Tensor, scale: int) -> Image.Image:
    """The image's 3x3 cells (1-9) apart, each with its cut tile outlined."""
    whole = api.to_picture(image, image.shape[-1] * scale)
    cells = []
    for cell in range(TILES):
        top, left = (scale * (grid.start + grid.cell * place) for place in divmod(cell, GRID))
        picture = whole.crop((left, top, left + grid.cell * scale, top + grid.cell * scale))
        row, column = (int(v) * scale for v in offsets[cell])
        corner = grid.tile * scale - 1
        ImageDraw.Draw(picture).rectangle((column, row, column + corner, row + corner), outline=BOX, width=2)
        cells.append(picture)
    return api.tile_grid(cells, GRID, gap=TILE_GAP, numbers=[str(cell + 1) for cell in range(TILES)])


def draw_puzzles(
    images: torch.Tensor,
    tiles: torch.Tensor,
    cells: torch.Tensor,
    offsets: torch.Tensor,
    gray: torch.Tensor,
    grid: TileGrid,
    *,
    targets: torch.Tensor,
    permutations: torch.Tensor,
    predicted: torch.Tensor | None,
    title: str,
    caption: str,
) -> Image.Image:
    """The sheet of puzzles.

    Args:
        images: originals ``(N, 3, S, S)`` in [0, 1].
        tiles: the network's inputs ``(N * 9, 3, t, t)``, input-position order.
        cells: ``(N, 9)`` the cell shown at each input position.
        offsets: ``(N, 9, 2)`` each cell's tile inside the cell (row, column), cell order.
        gray: ``(N,)`` bool, grey puzzles.
        grid: the puzzle's geometry.
        targets: ``(N,)`` permutation indices.
        permutations: ``(P, 9)`` the permutation set.
        predicted: ``(N,)`` predicted permutation indices after a run, else ``None``.
        title: drawn on top.
        caption: drawn under the rows.
    """
    scale = max(1, math.ceil(SMALLEST_SHOWN / grid.tile))
    side = grid.tile * scale
    rows = []
    for row in range(len(images)):
        shown = [api.to_picture(tiles[row * TILES + position], side) for position in range(TILES)]
        order = cells[row].tolist()  # input position -> cell
        in_cells: list[Image.Image | None] = [None] * TILES
        for position, cell in enumerate(order):
            in_cells[cell] = shown[position]
        numbers = [str(cell + 1) for cell in range(TILES)]
        row_cells = [
            api.PictureCell(_original(images[row], grid, offsets[row], scale)),
            api.PictureCell(
                api.tile_grid(in_cells, GRID, gap=TILE_GAP, numbers=numbers), "grey puzzle" if bool(gray[row]) else ""
            ),
            api.PictureCell(
                api.tile_grid(shown, GRID, gap=TILE_GAP, numbers=[str(cell + 1) for cell in order]),
                f"permutation {int(targets[row])}:\n{permutation_text(order)}",
            ),
        ]
        if predicted is not None:
            guess = permutations[int(predicted[row])].tolist()  # input position -> cell, as the model says
            put_back: list[Image.Image | None] = [None] * TILES
            put_numbers = [""] * TILES
            for position, cell in enumerate(guess):
                put_back[cell] = shown[position]
                put_numbers[cell] = str(order[position] + 1)
            row_cells.append(
                api.PictureCell(
                    api.tile_grid(put_back, GRID, gap=TILE_GAP, numbers=put_numbers),
                    f"said {int(predicted[row])}:\n{permutation_text(guess)}",
                    verdict=int(predicted[row]) == int(targets[row]),
                )
            )
        rows.append(row_cells)
    header = ["the image's cells 1-9", "its tiles, solved", "shuffled: the network's input"]
    if predicted is not None:
        header.append("put back as the model says")
    return api.picture_sheet(rows, title, header=header, caption=caption)
