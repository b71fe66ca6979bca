"""The colour prior (class rebalancing by colour rarity), against a plain reference."""

from __future__ import annotations

import math

import torch
from sslx_colorization.rebalance import ColourPrior

from ssl_engine.api import ab_bins, rgb_to_lab
from ssl_engine.color.ab_bins import srgb_cube_samples

BINS = ab_bins()


def some_ab() -> torch.Tensor:
    """ab of random images and of the gamut's edges (the cube's faces), ``(1, 2, N, 1)``."""
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).reshape(1, 3, -1, 1)
    return rgb_to_lab(torch.cat([images, srgb_cube_samples(65, 9)], dim=2))[:, 1:]


def reference_weights(counts: list[float], centres: list[list[float]], mix: float, sigma: float) -> list[float]:
    """The paper's Eq. 4 with plain loops: smooth, mix with uniform, invert, normalise under the prior."""
    q = len(counts)
    total = sum(counts)
    smoothed = []
    for i in range(q):
        spread = 0.0
        for j in range(q):
            squared = (centres[i][0] - centres[j][0]) ** 2 + (centres[i][1] - centres[j][1]) ** 2
            spread += counts[j] / total * math.exp(-squared / (2 * sigma**2))
        smoothed.append(spread)
    smoothed = [s / sum(smoothed) for s in smoothed]
    raw = [1 / ((1 - mix) * s + mix / q) for s in smoothed]
    norm = sum(s * w for s, w in zip(smoothed, raw, strict=True))
    return [w / norm for w in raw]


def test_prior_counts_the_bins_seen_in_training() -> None:
    prior = ColourPrior(BINS)
    classes = torch.randint(0, BINS.classes, (4, 8, 8), generator=torch.Generator().manual_seed(0))
    prior.update(classes)
    prior.update(classes[:1])
    expected = torch.zeros(BINS.classes)
    for c in classes.flatten().tolist() + classes[:1].flatten().tolist():
        expected[c] += 1
    torch.testing.assert_close(prior.counts, expected)
    assert set(prior.state_dict()) == {"counts"}  # checkpointed; the kernel is rebuilt, not saved


def test_rarer_bins_weigh_more_and_the_mean_weight_is_one() -> None:
    prior = ColourPrior(BINS, mix=0.5, sigma=5.0)
    common, rare = int(BINS.quantize(torch.zeros(1, 2, 1, 1))), int(BINS.quantize(torch.full((1, 2, 1, 1), 40.0)))
    prior.update(torch.tensor([common] * 900 + [rare] * 10))
    weights = prior.weights()
    assert weights[rare] > 5 * weights[common]
    torch.testing.assert_close((prior.smoothed() * weights).sum(), torch.tensor(1.0))
    unseen = int(BINS.quantize(torch.full((1, 2, 1, 1), -60.0)))
    assert weights[unseen] > weights[rare]  # never seen: the largest weight, bounded by the uniform mix
    assert weights.max() <= 1 / (0.5 / BINS.classes)


def test_prior_weights_match_a_plain_reference() -> None:
    prior = ColourPrior(BINS, mix=0.5, sigma=5.0)
    prior.update(BINS.quantize(some_ab()))
    expected = reference_weights(prior.counts.tolist(), BINS.centres.tolist(), 0.5, 5.0)
    torch.testing.assert_close(prior.weights(), torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_no_rebalancing_with_lambda_one_and_uniform_before_any_data() -> None:
    torch.testing.assert_close(ColourPrior(BINS).weights(), torch.ones(BINS.classes))
    prior = ColourPrior(BINS, mix=1.0)
    prior.update(torch.tensor([0, 0, 0, 5]))
    torch.testing.assert_close(prior.weights(), torch.ones(BINS.classes))
