"""Colour distortion with a different strength for every image of the batch, in one pass on the device.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (ICML), Appendix A:
colour jitter (brightness, contrast, saturation, hue; strength ``s``) applied with probability 0.8, then
conversion to grayscale with probability 0.2. Colour distortion is what stops the network from telling two crops
of one image apart by their colour histograms alone (Sec. 3, Fig. 6).

Each operation follows torchvision's definition (the paper's pseudo-code is ``transforms.ColorJitter``), so a
per-image ``torchvision.transforms.functional`` call is the reference; here the factors are ``(N,)`` tensors.
"""

from __future__ import annotations

import torch

# torchvision's rgb_to_grayscale weights (ITU-R BT.601 luma, rounded as torchvision rounds them).
LUMA = (0.2989, 0.587, 0.114)

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
JITTER_OPERATIONS = 4


def _per_image(factors: torch.Tensor) -> torch.Tensor:
    return factors.view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images: ``(N, 3, H, W)`` -> ``(N, 1, H, W)``."""
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype)
    return torch.einsum("nchw,c->nhw", images, weights)[:, None]


def _blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clipped to [0, 1] (torchvision's ``_blend``)."""
    factors = _per_image(factors)
    return (factors * images + (1 - factors) * other).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Scale every pixel: ``(N, 3, H, W)``, factors ``(N,)`` >= 0 (1 leaves the image unchanged)."""
    return (images * _per_image(factors)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean gray level: ``(N, 3, H, W)``, factors ``(N,)`` >= 0."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return _blend(images, mean, factors)


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the image's grayscale version: ``(N, 3, H, W)``, factors ``(N,)`` >= 0."""
    return _blend(images, grayscale(images), factors)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] -> HSV in [0, 1]; hue 0 where the pixel is gray.

    Ties between the largest channels resolve to red, then green (as torchvision does).
    """
    red, green, blue = images.unbind(dim=1)
    value = images.amax(dim=1)  # amax/amin, not max/min: those also search the indices (25x slower on CPU)
    chroma = value - images.amin(dim=1)
    gray = chroma == 0
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    safe_chroma = torch.where(gray, torch.ones_like(chroma), chroma)
    hue = torch.where(
        value == red,
        ((green - blue) / safe_chroma) % 6,
        torch.where(value == green, (blue - red) / safe_chroma + 2, (red - green) / safe_chroma + 4),
    )
    hue = torch.where(gray, torch.zeros_like(hue), hue) / 6
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` HSV in [0, 1] -> RGB in [0, 1].

    Channel ``n`` (red 5, green 3, blue 1) is ``v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``,
    the closed form of the hexcone's six linear pieces.
    """
    hue, saturation, value = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    offsets = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = (offsets + 6 * hue) % 6  # (N, 3, H, W)
    return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)


def adjust_hue(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Rotate the hue: ``(N, 3, H, W)``, factors ``(N,)`` in [-0.5, 0.5] (a fraction of the colour wheel)."""
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, 0:1] + _per_image(factors)) % 1.0
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # indexed by BRIGHTNESS, ...


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue, each image with its own factors and its own order.

    ``torchvision.transforms.ColorJitter`` applies the four adjustments in a random order; the same is done here
    per image. Round ``k`` applies, to the images whose ``k``-th adjustment is ``j``, adjustment ``j``: each
    adjustment runs once per round on the images scheduled for it, so the whole jitter costs about one pass of
    each adjustment over the batch, not four (``benchmarks/augmentation_speed.py``: 4-5x faster than running every
    adjustment on every image each round and selecting). Choosing the subsets costs 16 small host syncs a step
    on a GPU.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1].
        factors: ``(N, 4)``: brightness, contrast and saturation factors (1 = unchanged) and hue shift (0 =
            unchanged), columns :data:`BRIGHTNESS`, :data:`CONTRAST`, :data:`SATURATION`, :data:`HUE`.
        order: ``(N, 4)`` int64, a permutation of ``0..3`` per image: adjustment ``order[n, k]`` is the ``k``-th.
        apply: ``(N,)`` bool; the other images pass unchanged.

    Returns:
        ``(N, 3, H, W)`` in [0, 1].
    """
    images = images.clone()  # one copy, then every round writes its images in place
    for position in range(JITTER_OPERATIONS):
        for operation, adjust in enumerate(ADJUSTMENTS):
            chosen = torch.nonzero(apply & (order[:, position] == operation)).squeeze(1)  # (n,)
            if len(chosen):
                adjusted = adjust(images.index_select(0, chosen), factors.index_select(0, chosen)[:, operation])
                images.index_copy_(0, chosen, adjusted)
    return images


def random_grayscale(images: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Replace the chosen images by their luma in all three channels: ``(N, 3, H, W)``, ``apply`` ``(N,)`` bool."""
    return torch.where(apply.view(-1, 1, 1, 1), grayscale(images).expand_as(images), images)


def solarize(images: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` of the chosen images (BYOL's solarization, Grill et al. 2020,
    Appendix B: threshold 128 of 255).

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        apply: ``(N,)`` bool; the other images pass unchanged.
    """
    solarized = torch.where(images >= threshold, 1.0 - images, images)
    return torch.where(apply[:, None, None, None], solarized, images)
