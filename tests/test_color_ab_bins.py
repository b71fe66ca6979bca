"""The ab bins, the soft encoding and the annealed mean, against plain references."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_engine.color.ab_bins import ab_bins, annealed_mean, srgb_cube_samples
from ssl_engine.color.lab import rgb_to_lab

BINS = ab_bins()


def some_ab() -> torch.Tensor:
    """ab of random images and of the gamut's edges (the cube's faces), ``(1, 2, N, 1)``."""
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).reshape(1, 3, -1, 1)
    return rgb_to_lab(torch.cat([images, srgb_cube_samples(65, 9)], dim=2))[:, 1:]


def all_distances(ab: torch.Tensor) -> torch.Tensor:
    """Squared distance of every pixel of ``(1, 2, N, 1)`` to every bin centre: ``(N, Q)``."""
    pixels = ab[0, :, :, 0].T  # (N, 2)
    return (pixels[:, None, :] - BINS.centres[None]).square().sum(dim=-1)


def test_the_kept_bins_are_those_the_srgb_gamut_reaches() -> None:
    assert BINS.classes == 262  # the paper keeps 313 from its own gamut estimate; 262 hold sRGB colours
    assert len(torch.unique(BINS.cells, dim=0)) == BINS.classes
    # Every sRGB colour's own bin is kept.
    own = torch.round(some_ab()[0, :, :, 0].T / 10).long()  # (N, 2)
    kept = {tuple(cell) for cell in BINS.cells.tolist()}
    assert all(tuple(cell) in kept for cell in own.tolist())
    # The table maps each kept cell back to its class and nothing else.
    shift = BINS.radius + 2
    assert (BINS.table[BINS.cells[:, 0] + shift, BINS.cells[:, 1] + shift] == torch.arange(BINS.classes)).all()
    assert int((BINS.table >= 0).sum()) == BINS.classes


def test_hard_targets_are_the_nearest_bins() -> None:
    ab = some_ab()
    classes = BINS.quantize(ab)[0, :, 0]  # (N,)
    distances = all_distances(ab)
    chosen = distances.gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(chosen, distances.min(dim=1).values)  # ties may pick either of equal bins
    # A colour at a bin centre is that bin: (30, -40) is cell (3, -4).
    centre = torch.tensor([30.0, -40.0]).view(1, 2, 1, 1)
    assert BINS.cells[BINS.quantize(centre).item()].tolist() == [3, -4]


def test_soft_encoding_is_a_gaussian_over_the_five_nearest_bins() -> None:
    ab = some_ab()
    classes, weights = BINS.soft_encode(ab, 5, 5.0)  # (1, 5, N, 1)
    classes, weights = classes[0, :, :, 0].T, weights[0, :, :, 0].T  # (N, 5)
    distances = all_distances(ab)
    nearest = distances.topk(5, dim=1, largest=False).values  # (N, 5), the 5 nearest over all Q bins
    torch.testing.assert_close(distances.gather(1, classes), nearest)
    assert (classes[:, 0] == BINS.quantize(ab)[0, :, 0]).all()
    for n in range(0, len(classes), 997):  # a plain reference on some pixels
        kernel = [math.exp(-float(d) / (2 * 5.0**2)) for d in nearest[n]]
        assert weights[n].tolist() == pytest.approx([k / sum(kernel) for k in kernel], abs=1e-6)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(weights)))


def test_annealed_mean_of_a_one_hot_distribution_is_the_bin_centre() -> None:
    chosen = torch.tensor([0, 17, 100, BINS.classes - 1])
    one_hot = torch.nn.functional.one_hot(chosen, BINS.classes).float()  # (4, Q)
    logits = one_hot.log()[:, :, None, None]  # log of the distribution: -inf off the chosen bin
    for temperature in (0.38, 1.0):
        decoded = annealed_mean(logits, BINS.centres, temperature)[:, :, 0, 0]
        torch.testing.assert_close(decoded, BINS.centres[chosen])


def test_annealed_mean_interpolates_between_mean_and_mode() -> None:
    logits = torch.randn(3, BINS.classes, 2, 2, generator=torch.Generator().manual_seed(0))
    probabilities = logits.softmax(dim=1)
    mean = torch.einsum("bqhw,qc->bchw", probabilities, BINS.centres)
    torch.testing.assert_close(annealed_mean(logits, BINS.centres, 1.0), mean)
    top = logits.argmax(dim=1)  # (3, 2, 2)
    sharp = logits.scatter_add(1, top[:, None], torch.ones(3, 1, 2, 2))  # a clear mode: 1 above the runner-up
    mode = BINS.centres[top].permute(0, 3, 1, 2)
    torch.testing.assert_close(annealed_mean(sharp, BINS.centres, 0.01), mode, atol=1e-3, rtol=0)
    # The paper's T = 0.38 by hand: z^(1/T), renormalised, then the mean.
    sharpened = probabilities ** (1 / 0.38)
    sharpened = sharpened / sharpened.sum(dim=1, keepdim=True)
    expected = torch.einsum("bqhw,qc->bchw", sharpened, BINS.centres)
    torch.testing.assert_close(annealed_mean(logits, BINS.centres, 0.38), expected, atol=1e-4, rtol=1e-4)
