"""Sampling the patch pairs of context prediction for a whole batch at once, on the images' device.

Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by Context Prediction" (ICCV), Sec. 3
and 4, and the authors' code (``cdoersch/deepcontext``, ``train.py``):

- a 3x3 grid of 96 px patches, 48 px apart, is laid over the image at a random place; the centre patch and one
  of its 8 neighbours make a training pair, and the target is which of the 8 the neighbour is;
- every patch is moved by its own random jitter of -7..7 px along each axis, so lines and edges don't continue
  straight from one patch into the other (the gap left between the two is at least ``48 - 2 * 7 = 34`` px);
- some patches (a third in the authors' code) are downsampled to as little as 100 total pixels and upsampled
  back, so sharpness and fine texture can't be matched across the pair (and for robustness to pixelation);
- colour dropping: 2 of the 3 colour channels of each patch are replaced by Gaussian noise with about 1/100 the
  standard deviation of the remaining channel, against chromatic aberration (the lens shifts colour channels
  against each other by an amount that grows towards the image's edges, which gives away where a patch was).

Here the geometry is scaled to an ``S x S`` image: gap and jitter are fractions of the patch side (48/96 and
7/96), and the patch is the largest for which the grid, jitter included, fits in the image (15 px at 64 px, 7 px
at 32 px). Everything below works on whole batches with index arithmetic and batched matrix products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

GRID = 3
NEIGHBOURS = GRID * GRID - 1
MIN_PATCH = 7  # smallest patch side a convnet still sees some structure in (as the jigsaw tiles)
PAPER_PATCH = 96
PAPER_GAP_FRACTION = 48 / PAPER_PATCH
PAPER_JITTER_FRACTION = 7 / PAPER_PATCH
PAPER_DOWNSAMPLE_FRACTION = 10 / PAPER_PATCH  # "as little as 100 total pixels" of a 96 x 96 patch
PAPER_DOWNSAMPLE_PROBABILITY = 0.33  # the authors' code; the paper only says "some patches"
PAPER_NOISE_FRACTION = 0.01  # noise std / std of the remaining channel

# Step (row, column) from the centre slot to the neighbour of each class, numbered row-major around the centre:
#   0 1 2
#   3 . 4
#   5 6 7
NEIGHBOUR_STEPS: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
)


def round_half_up(value: float) -> int:
    """``round`` with halves rounded up (Python's ``round`` rounds them to even)."""
    return math.floor(value + 0.5)


@dataclass(frozen=True)
class PatchGrid:
    """Geometry of the 3x3 patch grid on ``S x S`` images.

    Slot ``(r, c)`` (``r, c`` in 0..2, the centre is ``(1, 1)``) of a grid placed at ``origin`` has its top-left
    pixel at ``origin + jitter + (r, c) * pitch``; a patch is drawn there and moved by its own offset in
    ``[-jitter, jitter]`` per axis, so every patch stays inside ``[origin, origin + span)``.

    Attributes:
        image_size: ``S``.
        patch: side of a patch.
        gap: pixels between neighbouring slots, ``round(patch * gap_fraction)``.
        jitter: largest shift of a patch along each axis, ``round(patch * jitter_fraction)``.
    """

    image_size: int
    patch: int
    gap: int
    jitter: int

    @classmethod
    def with_patch(
        cls,
        image_size: int,
        patch: int,
        gap_fraction: float = PAPER_GAP_FRACTION,
        jitter_fraction: float = PAPER_JITTER_FRACTION,
    ) -> PatchGrid:
        """The grid with patches of side ``patch`` (which may not fit: see :attr:`slack`)."""
        return cls(image_size, patch, round_half_up(patch * gap_fraction), round_half_up(patch * jitter_fraction))

    @classmethod
    def for_images(
        cls,
        image_size: int,
        gap_fraction: float = PAPER_GAP_FRACTION,
        jitter_fraction: float = PAPER_JITTER_FRACTION,
    ) -> PatchGrid:
        """The grid with the largest patch that fits in ``image_size`` (patch 1 if none does: check it)."""
        patch = 1
        while cls.with_patch(image_size, patch + 1, gap_fraction, jitter_fraction).span <= image_size:
            patch += 1
        return cls.with_patch(image_size, patch, gap_fraction, jitter_fraction)

    @property
    def pitch(self) -> int:
        """Distance between the top-left pixels of neighbouring slots."""
        return self.patch + self.gap

    @property
    def span(self) -> int:
        """Side of the square the grid's patches can reach, jitter included."""
        return GRID * self.patch + (GRID - 1) * self.gap + 2 * self.jitter

    @property
    def slack(self) -> int:
        """Room for the grid's random placement: origins are drawn in ``[0, slack]``."""
        return self.image_size - self.span

    @property
    def min_gap(self) -> int:
        """Fewest pixels between the centre patch and its neighbour, along the axis they are apart on.

        ``gap - 2 * jitter`` (the paper's 34 px); negative if a large jitter lets patches overlap.
        """
        return self.gap - 2 * self.jitter


def smallest_image_size(
    gap_fraction: float = PAPER_GAP_FRACTION,
    jitter_fraction: float = PAPER_JITTER_FRACTION,
    min_patch: int = MIN_PATCH,
) -> int:
    """Smallest image side with patches of at least ``min_patch`` px: 31 with the paper's fractions.

    The span grows with the patch side, so this is the span of the smallest allowed patch.
    """
    return PatchGrid.with_patch(0, min_patch, gap_fraction, jitter_fraction).span


def crop_patches(images: Tensor, corners: Tensor, size: int) -> Tensor:
    """Cut square patches out of every image with one gather (no loop over images or patches).

    Args:
        images: ``(B, C, S, S)``.
        corners: ``(B, K, 2)`` int64, top-left (row, column) of each patch, inside the image.
        size: patch side.

    Returns:
        ``(B, K, C, size, size)``: patch ``k`` of image ``b`` is
        ``images[b, :, y:y + size, x:x + size]`` with ``(y, x) = corners[b, k]``.
    """
    batch, channels = images.shape[:2]
    span = torch.arange(size, device=images.device)
    rows = corners[..., 0, None] + span  # (B, K, size)
    columns = corners[..., 1, None] + span  # (B, K, size)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, None, :, None, None]
    return images[batch_index, channel_index, rows[:, :, None, :, None], columns[:, :, None, None, :]]


def _resize_matrix(source: int, target: int, antialias: bool) -> Tensor:
    """The ``(target, source)`` matrix of 1-D bilinear resizing as ``F.interpolate`` does it.

    Bilinear resizing (antialiased or not) is separable, so a 2-D resize of ``X`` is ``R @ X @ R.T``. ``R`` is
    read off by resizing the identity image along its rows only (its columns are the unit impulses).
    """
    identity = torch.eye(source, dtype=torch.float64)[None, None]  # (1, 1, source, source)
    resized = F.interpolate(identity, size=(target, source), mode="bilinear", align_corners=False, antialias=antialias)
    return resized[0, 0]


def resampling_table(size: int, device: torch.device | str = "cpu") -> Tensor:
    """Down-then-up resampling matrices of a ``size`` px patch, one per intermediate side.

    Row ``s`` (1..size) is the ``(size, size)`` matrix ``U_s @ D_s``, where ``D_s`` downsamples to ``s`` px
    (bilinear with antialiasing, i.e. a proper low-pass) and ``U_s`` upsamples back (bilinear), so that
    ``table[s] @ X @ table[s].T`` equals ``F.interpolate`` down to ``s x s`` then back up; row ``size`` is the
    identity, row 0 is unused (zeros).

    Returns:
        ``(size + 1, size, size)`` float32 on ``device``.
    """
    table = torch.zeros(size + 1, size, size, dtype=torch.float64)
    for side in range(1, size + 1):
        down = _resize_matrix(size, side, antialias=True)  # (side, size)
        up = _resize_matrix(side, size, antialias=False)  # (size, side)
        table[side] = up @ down
    return table.to(device=device, dtype=torch.float32)


def downsample_sides(uniform: Tensor, size: int, min_fraction: float) -> Tensor:
    """Side each downsampled patch is reduced to, as in the authors' code.

    The total pixel count is uniform between ``low**2`` and ``size**2``, ``low = round(size * min_fraction)``
    (at least 2, the paper's 100 pixels of 96 x 96 being 10/96 of the side); the side is its square root,
    rounded down and at most ``size - 1``, so a downsampled patch always loses resolution.

    Args:
        uniform: uniform [0, 1) numbers, any shape.
        size: patch side.
        min_fraction: smallest side as a fraction of ``size``.

    Returns:
        int64 sides in ``[low, size - 1]``, the shape of ``uniform``.
    """
    low = min(max(2, round_half_up(size * min_fraction)), size - 1)
    pixels = low**2 + uniform * (size**2 - low**2)
    return pixels.sqrt().floor().long().clamp(low, size - 1)


def resample(patches: Tensor, sides: Tensor, table: Tensor) -> Tensor:
    """Downsample each patch to its own side and back up, all patches in two batched matrix products.

    Args:
        patches: ``(N, C, p, p)`` float.
        sides: ``(N,)`` int64 in ``[1, p]``; ``p`` leaves a patch unchanged (bit for bit).
        table: :func:`resampling_table` of ``p`` on the patches' device.

    Returns:
        ``(N, C, p, p)``.
    """
    with torch.autocast(patches.device.type, enabled=False):  # keep float32 under the loop's bf16 autocast
        matrices = table[sides][:, None]  # (N, 1, p, p)
        resampled = matrices @ patches.float() @ matrices.transpose(-1, -2)
    unchanged = (sides == patches.shape[-1]).view(-1, 1, 1, 1)
    return torch.where(unchanged, patches, resampled.to(patches.dtype))


def choose_dropped(scores: Tensor, counts: Tensor) -> Tensor:
    """Which channels to drop: the ``counts`` channels of each patch with the lowest ``scores``.

    Args:
        scores: ``(..., C)`` distinct random numbers (uniform), which make every channel equally likely.
        counts: ``(...)`` int64, channels to drop per patch.

    Returns:
        ``(..., C)`` bool.
    """
    rank = scores.argsort(dim=-1).argsort(dim=-1)  # rank of each channel's score within its patch
    return rank < counts[..., None]


def drop_colors(patches: Tensor, dropped: Tensor, noise: Tensor, noise_fraction: float) -> Tensor:
    """Replace the dropped channels by Gaussian noise scaled to the kept channels (colour dropping).

    A dropped channel becomes ``noise_fraction * sigma * noise``, ``sigma`` the standard deviation of the patch's
    kept channels (root mean of their per-channel variances): nothing of the dropped channel's content is left,
    and its scale only repeats what the kept channels already show.

    Args:
        patches: ``(B, K, C, p, p)``, normalised.
        dropped: ``(B, K, C)`` bool; at least one channel of each patch is kept.
        noise: ``(B, K, C, p, p)`` standard normal.
        noise_fraction: the paper's 1/100.

    Returns:
        ``(B, K, C, p, p)``.
    """
    kept = (~dropped).to(patches.dtype)
    variance = patches.var(dim=(-2, -1), unbiased=False)  # (B, K, C)
    kept_variance = (variance * kept).sum(-1) / kept.sum(-1).clamp(min=1.0)  # (B, K)
    sigma = noise_fraction * kept_variance.sqrt()
    return torch.where(dropped[..., None, None], sigma[..., None, None, None] * noise, patches)
