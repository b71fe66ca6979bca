"""The CIE Lab conversion: published values, a per-pixel reference, round trips, neutrals, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_engine.color.lab import gray_from_lightness, lab_to_rgb, lightness_input, lightness_input_from_rgb, rgb_to_lab
from ssl_engine.images import MEAN, STD

# sRGB (D65) -> CIE Lab (D65), from Bruce Lindbloom's published colour calculator/tables (sRGB companding,
# the sRGB primaries' matrix, reference white D65), the usual reference for these numbers.
PUBLISHED = {
    (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),  # red
    (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),  # green
    (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),  # blue
    (1.0, 1.0, 0.0): (97.1393, -21.5537, 94.4780),  # yellow
    (0.0, 1.0, 1.0): (91.1132, -48.0875, -14.1312),  # cyan
    (1.0, 0.0, 1.0): (60.3242, 98.2343, -60.8249),  # magenta
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),  # white
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),  # black
    (128 / 255, 128 / 255, 128 / 255): (53.5850, 0.0, 0.0),  # mid gray
}


def as_image(colours: list[tuple[float, float, float]]) -> torch.Tensor:
    """``(N, 3)`` colours as ``N`` one-pixel images ``(N, 3, 1, 1)``."""
    return torch.tensor(colours, dtype=torch.float32)[:, :, None, None]


def reference_lab(r: float, g: float, b: float) -> tuple[float, float, float]:
    """One pixel, written out from the sRGB and CIE formulas with Python floats."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    rl, gl, bl = linear(r), linear(g), linear(b)
    x = 0.4124564 * rl + 0.3575761 * gl + 0.1804375 * bl
    y = 0.2126729 * rl + 0.7151522 * gl + 0.0721750 * bl
    z = 0.0193339 * rl + 0.1191920 * gl + 0.9503041 * bl
    white = (0.4124564 + 0.3575761 + 0.1804375, 0.2126729 + 0.7151522 + 0.0721750, 0.0193339 + 0.1191920 + 0.9503041)

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / white[0]), f(y / white[1]), f(z / white[2])
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def test_matches_published_values_of_primaries_white_and_gray() -> None:
    lab = rgb_to_lab(as_image(list(PUBLISHED)))[:, :, 0, 0]
    expected = torch.tensor(list(PUBLISHED.values()))
    torch.testing.assert_close(lab, expected, atol=2e-3, rtol=0)


def test_matches_a_per_pixel_reference_on_random_images() -> None:
    images = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    images[0, :, 0, 0] = 0.02  # the linear part of the sRGB curve
    images[0, :, 0, 1] = torch.tensor([0.0, 0.01, 0.03])  # the linear part of the cube root (very dark)
    lab = rgb_to_lab(images)
    assert lab.shape == images.shape and lab.dtype == torch.float32
    for n in range(2):
        for i in range(6):
            for j in range(5):
                expected = reference_lab(*images[n, :, i, j].tolist())
                assert lab[n, :, i, j].tolist() == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("clip", [True, False])
def test_round_trip_within_1e_3(clip: bool) -> None:
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images[0] = 0.0  # black and white, the gamut's ends
    images[1] = 1.0
    back = lab_to_rgb(rgb_to_lab(images), clip=clip)
    assert (back - images).abs().max() < 1e-3


def test_lab_to_rgb_clips_out_of_gamut_colours_only_when_asked() -> None:
    lab = torch.tensor([50.0, 120.0, -120.0])[None, :, None, None]  # far outside sRGB
    assert lab_to_rgb(lab).min() >= 0 and lab_to_rgb(lab).max() <= 1
    raw = lab_to_rgb(lab, clip=False)
    assert raw.min() < 0 or raw.max() > 1
    torch.testing.assert_close(rgb_to_lab(raw.clamp(-0.5, 1.5)), rgb_to_lab(raw), atol=1e-6, rtol=0)


def test_neutral_colours_have_no_colour_and_keep_their_lightness() -> None:
    levels = torch.linspace(0, 1, 101)
    grays = levels[:, None, None, None].expand(-1, 3, 1, 1)
    lab = rgb_to_lab(grays)
    assert lab[:, 1:].abs().max() < 1e-4  # white is the XYZ of RGB (1, 1, 1)
    assert (lab[1:, 0] > lab[:-1, 0]).all()  # lightness grows with the gray level
    torch.testing.assert_close(gray_from_lightness(lab[:, :1]), grays[:, :1], atol=1e-5, rtol=0)


def test_lightness_input_is_the_gray_of_the_same_lightness_normalised() -> None:
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    inputs = lightness_input_from_rgb(images)
    assert inputs.shape == (4, 3, 8, 8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    gray = inputs * std + mean  # undo the RGB normalisation
    torch.testing.assert_close(gray[:, 0], gray[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(gray[:, 0], gray[:, 2], atol=1e-5, rtol=0)
    # The gray image has exactly the lightness of the colour image.
    torch.testing.assert_close(rgb_to_lab(gray)[:, 0], rgb_to_lab(images)[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(lightness_input(rgb_to_lab(images)), inputs)


def test_lightness_input_ignores_the_colour() -> None:
    """Two images with the same L and different ab give the same network input."""
    images = 0.25 + 0.5 * torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))  # well inside gamut
    lab = rgb_to_lab(images)
    recoloured = lab.clone()
    recoloured[:, 1:] = -0.5 * lab[:, 1:] + 3.0  # other hues, other saturation, same lightness
    other = lab_to_rgb(recoloured, clip=False)
    assert other.min() >= 0 and other.max() <= 1  # still real sRGB colours
    assert (other - images).abs().max() > 0.05
    torch.testing.assert_close(lightness_input_from_rgb(other), lightness_input_from_rgb(images), atol=1e-4, rtol=0)


def test_computes_in_float32_inside_a_bfloat16_autocast() -> None:
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    expected = rgb_to_lab(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(images)
        back = lab_to_rgb(lab)
    assert lab.dtype == torch.float32 and back.dtype == torch.float32
    torch.testing.assert_close(lab, expected)
    assert (back - images).abs().max() < 1e-3


def test_published_lightness_of_mid_gray_follows_the_cie_formula() -> None:
    """L of sRGB 128/255 computed from the standard by hand, as a check on the table's gray entry."""
    linear = ((128 / 255 + 0.055) / 1.055) ** 2.4
    assert 116 * math.pow(linear, 1 / 3) - 16 == pytest.approx(PUBLISHED[(128 / 255,) * 3][0], abs=1e-3)
