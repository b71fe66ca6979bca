"""The quantised ab colour space of colorization: in-gamut bins, hard and soft encodings, annealed-mean decoding.

Zhang, Isola & Efros 2016, "Colorful Image Colorization" (ECCV), Sec. 2.1: the ab plane is cut into square bins
of side 10 and only the bins the gamut reaches are classes. A pixel's target is its nearest bin (hard, the
split-brain paper's "basic 1-hot encoding") or, in the colorization paper, a soft encoding over its 5 nearest
bins weighted by a Gaussian of their distance (sigma 5). A predicted distribution is turned back into one
colour by the annealed mean (Sec. 2.3): the mean of the distribution sharpened by a temperature ``T``
(``T = 1`` the mean, ``T -> 0`` the mode; the paper uses 0.38).

Which bins are kept: every bin that some sRGB colour falls in, found by converting a dense sampling of the RGB
cube (its six faces finely, its inside coarsely; the faces bound the gamut's projection). With grid 10 that is
Q = 262 bins. The paper keeps 313, from its own gamut estimate: the 51 extra bins hold no sRGB colour, so they
could never be a target and only dilute the softmax. Bins are identified by their integer cell
``(round(a / grid), round(b / grid))``; class ``q`` is the ``q``-th kept cell in (a, b) lexicographic order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch.nn import functional as F

from ssl_engine.color.lab import rgb_to_lab

AB_GRID = 10.0
AB_EXTENT = 110.0  # |a|, |b| < 110 over the sRGB gamut
WINDOW = 2  # the nearest bins are looked for among the (2 * WINDOW + 1)^2 cells around a pixel's own cell


def srgb_cube_samples(face_steps: int = 257, inside_steps: int = 33) -> torch.Tensor:
    """Colours covering the sRGB cube: its six faces on a fine grid and its inside on a coarse one.

    Returns:
        ``(1, 3, N, 1)`` float32 RGB, ready for :func:`~ssl_engine.color.lab.rgb_to_lab`.
    """
    face = torch.linspace(0, 1, face_steps)
    u, v = torch.meshgrid(face, face, indexing="ij")
    u, v = u.flatten(), v.flatten()
    faces = []
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        for level in (0.0, 1.0):
            colours = torch.empty(len(u), 3)
            colours[:, channel] = level
            colours[:, others[0]], colours[:, others[1]] = u, v
            faces.append(colours)
    inside = torch.linspace(0, 1, inside_steps)
    cube = torch.stack(torch.meshgrid(inside, inside, inside, indexing="ij"), dim=-1).reshape(-1, 3)
    return torch.cat([*faces, cube]).T.reshape(1, 3, -1, 1)


@dataclass(frozen=True)
class ABBins:
    """The kept ab bins and a lookup table from cells to classes.

    Attributes:
        grid: side of a bin in Lab units.
        cells: ``(Q, 2)`` int64, the integer cell ``(round(a / grid), round(b / grid))`` of each class.
        radius: cells with ``|index| <= radius`` cover the gamut; pixels are clamped to them.
        table: ``(2 * (radius + WINDOW) + 1,) * 2`` int64, the class of cell ``(i, j)`` at
            ``[i + radius + WINDOW, j + radius + WINDOW]``, -1 where the cell is not kept.
    """

    grid: float
    cells: torch.Tensor
    radius: int
    table: torch.Tensor
    _copies: dict[torch.device, ABBins] = field(default_factory=dict, repr=False, compare=False)

    @property
    def classes(self) -> int:
        """Q, the number of kept bins."""
        return len(self.cells)

    @property
    def centres(self) -> torch.Tensor:
        """``(Q, 2)`` float32, the (a, b) centre of each bin."""
        return self.cells.float() * self.grid

    def to(self, device: torch.device | str) -> ABBins:
        """These bins with their tensors on ``device``."""
        return ABBins(self.grid, self.cells.to(device), self.radius, self.table.to(device))

    def on(self, device: torch.device) -> ABBins:
        """These bins on ``device``, copied once per device and kept (a task's forward asks every step)."""
        if device not in self._copies:
            self._copies[device] = self.to(device)
        return self._copies[device]

    def nearest(self, ab: torch.Tensor, neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``neighbours`` kept bins nearest to each pixel, nearest first.

        Only the cells in a 5x5 window around the pixel's own cell are candidates: the nearest kept bins always
        lie there (a cell 3 away is at least 25 units off, and the gamut keeps more than 5 cells nearer than
        that around any colour it holds); the tests check it against all Q bins.

        Args:
            ab: ``(B, 2, H, W)`` in Lab units.
            neighbours: how many bins ``K`` (1 to 25).

        Returns:
            classes ``(B, K, H, W)`` int64 and squared distances ``(B, K, H, W)`` float32 (``inf`` where the
            window holds fewer than ``K`` kept bins; their class is then 0).
        """
        span = torch.arange(-WINDOW, WINDOW + 1, device=ab.device)
        offsets = torch.cartesian_prod(span, span)  # (25, 2)
        own = torch.round(ab.float() / self.grid).long().clamp(-self.radius, self.radius)  # (B, 2, H, W)
        candidates = own[:, None] + offsets[None, :, :, None, None]  # (B, 25, 2, H, W)
        shift = self.radius + WINDOW
        classes = self.table[candidates[:, :, 0] + shift, candidates[:, :, 1] + shift]  # (B, 25, H, W)
        distance = (ab.float()[:, None] - candidates.float() * self.grid).square().sum(dim=2)  # (B, 25, H, W)
        distance = distance.masked_fill(classes < 0, math.inf)
        if neighbours == 1:  # the hard encoding: a plain minimum is several times faster than topk
            nearest_distance, index = distance.min(dim=1, keepdim=True)
        else:
            nearest_distance, index = distance.topk(neighbours, dim=1, largest=False)  # sorted, nearest first
        nearest_classes = classes.gather(1, index).clamp(min=0)
        return nearest_classes, nearest_distance

    def quantize(self, ab: torch.Tensor) -> torch.Tensor:
        """Hard encoding: the class of the nearest kept bin, ``(B, 2, H, W)`` -> ``(B, H, W)`` int64."""
        return self.nearest(ab, 1)[0][:, 0]

    def soft_encode(self, ab: torch.Tensor, neighbours: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft encoding (Zhang et al. 2016, Sec. 2.1): the ``K`` nearest bins, weighted by a Gaussian.

        Args:
            ab: ``(B, 2, H, W)`` in Lab units.
            neighbours: ``K`` (the paper: 5); 1 gives the hard encoding.
            sigma: width of the Gaussian in Lab units (the paper: 5).

        Returns:
            classes ``(B, K, H, W)`` int64 (nearest first) and weights ``(B, K, H, W)`` summing to 1 over K.
        """
        classes, distance = self.nearest(ab, neighbours)
        weights = torch.softmax(-distance / (2 * sigma**2), dim=1)  # exp(-d^2 / 2 sigma^2), normalised
        return classes, weights


@lru_cache(maxsize=4)
def ab_bins(grid: float = AB_GRID) -> ABBins:
    """The kept ab bins for ``grid`` (cached; move them with :meth:`ABBins.to`)."""
    ab = rgb_to_lab(srgb_cube_samples())[0, 1:, :, 0]  # (2, N)
    radius = math.ceil(AB_EXTENT / grid)
    shift = radius + WINDOW
    side = 2 * shift + 1
    # One integer key per cell, in (a, b) lexicographic order: 1-d unique is ~30x faster than unique(dim=0).
    cell_a, cell_b = (torch.round(ab / grid).long().clamp(-radius, radius) + shift).unbind(dim=0)
    keys = torch.unique(cell_a * side + cell_b)
    cells = torch.stack([keys // side, keys % side], dim=1) - shift  # (Q, 2)
    table = torch.full((side, side), -1, dtype=torch.long)
    table[cells[:, 0] + shift, cells[:, 1] + shift] = torch.arange(len(cells))
    return ABBins(grid, cells, radius, table)


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float) -> torch.Tensor:
    """Point estimate of a per-pixel distribution over bins (Zhang et al. 2016, Sec. 2.3, Eq. 5).

    ``f_T(z) = exp(log z / T) / sum(exp(log z / T))`` re-sharpens the distribution ``z = softmax(logits)``; it
    is ``softmax(logits / T)``, as the softmax's normaliser cancels. The result is the mean of the bin centres
    under it. Logits of ``-inf`` (a distribution with zeros) are allowed.

    Args:
        logits: ``(B, Q, H, W)`` (or log-probabilities).
        centres: ``(Q, C)`` the value of each bin (``C = 2`` for ab, 1 for L).
        temperature: ``T > 0``; 1 gives the mean, small values the mode.

    Returns:
        ``(B, C, H, W)`` float32.
    """
    sharpened = F.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", sharpened, centres.float().to(logits.device))
