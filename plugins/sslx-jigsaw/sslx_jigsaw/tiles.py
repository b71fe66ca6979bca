"""Cutting the 3x3 jigsaw tiles out of a whole batch at once, with index arithmetic on the images' device.

Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles" (ECCV),
Sec. 3.2: a 225 px crop is split into a 3x3 grid of 75 px cells and a 64 px tile is taken at a random place
in each cell. The random place is both a gap between neighbouring tiles (on average 11 px, so edges don't
continue from one tile to the next) and a jitter (so tiles don't line up), which stop the network from solving
the puzzle by low-level cues instead of by recognising object parts.

Here the same geometry is scaled to an ``S x S`` image: ``cell = S // 3`` after cropping the centre
``3 * cell`` pixels, ``tile = round(cell * tile_fraction)`` (``tile_fraction = 64 / 75`` by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

GRID = 3
TILES = GRID * GRID
MIN_TILE = 7  # smallest tile side a convnet still sees some structure in (3 stride-2 stages leave 1 px)
PAPER_TILE_FRACTION = 64 / 75

# ITU-R BT.601 luma, the weights of torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


def tile_side(cell: int, tile_fraction: float) -> int:
    """``round(cell * tile_fraction)`` with halves rounded up (Python's ``round`` rounds them to even)."""
    return min(cell, math.floor(cell * tile_fraction + 0.5))


def smallest_image_size(tile_fraction: float = PAPER_TILE_FRACTION, min_tile: int = MIN_TILE) -> int:
    """Smallest image side with tiles of at least ``min_tile`` px: 24 for the paper's 64/75 (8 px cells)."""
    if not 0 < tile_fraction <= 1:
        raise ValueError(f"tile_fraction must be in (0, 1], got {tile_fraction}")
    cell = min_tile
    while tile_side(cell, tile_fraction) < min_tile:
        cell += 1
    return GRID * cell


@dataclass(frozen=True)
class TileGrid:
    """Geometry of the puzzle on ``S x S`` images.

    Attributes:
        image_size: ``S``.
        cell: side of a grid cell, ``S // 3``.
        tile: side of a tile, ``round(cell * tile_fraction)``; ``tile <= cell``.
        start: first row/column of the centre ``3 * cell`` crop (the ``S - 3 * cell`` leftover pixels are
            split around it).
    """

    image_size: int
    cell: int
    tile: int
    start: int

    @classmethod
    def for_images(cls, image_size: int, tile_fraction: float = PAPER_TILE_FRACTION) -> TileGrid:
        cell = image_size // GRID
        return cls(image_size, cell, tile_side(cell, tile_fraction), (image_size - GRID * cell) // 2)

    @property
    def max_offset(self) -> int:
        """Largest offset of a tile inside its cell: offsets are drawn in ``[0, cell - tile]``."""
        return self.cell - self.tile

    def cell_origins(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Top-left pixel (row, column) of each cell in row-major cell order: ``(9, 2)`` int64."""
        index = torch.arange(TILES, device=device)
        return self.start + self.cell * torch.stack([index // GRID, index % GRID], dim=1)


def extract_tiles(images: Tensor, grid: TileGrid, cells: Tensor, offsets: Tensor) -> Tensor:
    """Cut tiles out of every image with one gather (no loop over images or tiles).

    Args:
        images: ``(B, C, S, S)``.
        grid: the puzzle geometry for ``S``.
        cells: ``(B, K)`` int64, the cell (row-major, 0..8) each output tile is cut from.
        offsets: ``(B, K, 2)`` int64, (row, column) of each tile's top-left corner inside its cell, in
            ``[0, grid.max_offset]``.

    Returns:
        ``(B, K, C, tile, tile)``: tile ``k`` of image ``b`` is
        ``images[b, :, y:y + tile, x:x + tile]`` with ``(y, x) = cell_origins[cells[b, k]] + offsets[b, k]``.
    """
    batch, channels = images.shape[:2]
    corners = grid.cell_origins(images.device)[cells] + offsets  # (B, K, 2)
    span = torch.arange(grid.tile, device=images.device)
    rows = corners[..., 0, None] + span  # (B, K, tile)
    columns = corners[..., 1, None] + span  # (B, K, tile)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, None, :, None, None]
    return images[batch_index, channel_index, rows[:, :, None, :, None], columns[:, :, None, None, :]]


def to_grayscale(tiles: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Make the tiles of the chosen images gray (luma copied to the 3 channels); the others pass unchanged.

    Args:
        tiles: ``(B, K, 3, t, t)`` RGB.
        which: ``(B,)`` bool, the images whose tiles turn gray.

    Returns:
        ``(B, K, 3, t, t)``.
    """
    weights = torch.tensor(LUMA, device=tiles.device, dtype=tiles.dtype)
    # einsum contracts the channels in one pass (a multiply then a sum over dim 2 is ~4x slower on CPU).
    luma = torch.einsum("bkchw,c->bkhw", tiles, weights)[:, :, None].expand_as(tiles)
    return torch.where(which.view(-1, 1, 1, 1, 1), luma, tiles)
