"""The view augmentations of the joint-embedding methods, drawn per view and applied to the whole batch in one pass.

SimCLR's composition is the default; BYOL's asymmetric one (blur always on the first view, 10% on the second;
solarization 20% on the second) and DINO's multi-crop (global and local crops of their own sizes and scale ranges)
are the same pipeline with per-view probabilities, an output size and a scale range.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (ICML), Appendix A::

    random resized crop (area 0.08-1, aspect 3/4-4/3) -> horizontal flip (p 0.5)
    -> colour jitter (brightness, contrast, saturation 0.8 s; hue 0.2 s; random order; p 0.8)
    -> grayscale (p 0.2) -> [Gaussian blur (sigma 0.1-2, p 0.5), ImageNet only]

Every parameter of every view is drawn from the :class:`~ssl_engine.api.BatchRandom` given, one independent
stream per augmentation, so the views depend only on (seed, step, place in the global batch) and turning the blur
on or off leaves the other draws as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_engine.randomness import BatchRandom
from ssl_engine.views.blur import PAPER_SIGMA, gaussian_blur, kernel_size_for
from ssl_engine.views.color import HUE, JITTER_OPERATIONS, color_jitter, random_grayscale, solarize
from ssl_engine.views.crop import PAPER_RATIO, draw_boxes, resized_crop


@dataclass(frozen=True)
class ViewAugmentation:
    """The view pipeline with its knobs (defaults: SimCLR's, Chen et al. 2020, Appendix A).

    Attributes:
        strength: colour distortion strength ``s``: brightness, contrast and saturation factors are drawn from
            ``[max(0, 1 - 0.8 s), 1 + 0.8 s]``, the hue shift from ``[-0.2 s, 0.2 s]`` (paper: 1.0 on ImageNet,
            0.5 on CIFAR-10).
        jitter_probability: chance that a view is colour-jittered.
        gray_probability: chance that a view is made grayscale.
        min_scale: smallest crop area, as a fraction of the image's.
        blur: blur half the views (the paper does on ImageNet only).
        views: views per image.
        max_scale: largest crop area, as a fraction of the image's (DINO's local crops: 0.4).
        blur_probabilities: per view, the chance of a blur (BYOL: ``(1.0, 0.1)``); overrides ``blur``'s one half.
        solarize_probabilities: per view, the chance of solarization (BYOL: ``(0.0, 0.2)``); ``None``: never.
        size: side of the views (default: the images'), e.g. DINO's smaller local crops.
    """

    strength: float = 0.5
    jitter_probability: float = 0.8
    gray_probability: float = 0.2
    min_scale: float = 0.08
    blur: bool = False
    views: int = 2
    max_scale: float = 1.0
    blur_probabilities: tuple[float, ...] | None = None
    solarize_probabilities: tuple[float, ...] | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        for what, probabilities in (("blur", self.blur_probabilities), ("solarize", self.solarize_probabilities)):
            if probabilities is not None and len(probabilities) != self.views:
                raise ValueError(f"{what}_probabilities needs one value per view ({self.views})")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"crop scales must satisfy 0 < min {self.min_scale} <= max {self.max_scale} <= 1")

    @property
    def blurs(self) -> bool:
        return self.blur or self.blur_probabilities is not None

    def draw(self, random: BatchRandom, height: int, width: int) -> dict[str, torch.Tensor]:
        """Every random parameter of every view.

        Returns:
            ``boxes`` ``(B, V, 4)`` int64 top, left, height, width; ``flips`` ``(B, V)`` bool; ``jittered``
            ``(B, V)`` bool; ``jitter`` ``(B, V, 4)`` brightness, contrast, saturation factors and hue shift;
            ``jitter_order`` ``(B, V, 4)`` int64 permutations; ``gray`` ``(B, V)`` bool; with ``blur``, also
            ``blurred`` ``(B, V)`` bool and ``sigma`` ``(B, V)``.
        """
        views = self.views
        boxes = draw_boxes(random.split("crop"), views, height, width, (self.min_scale, self.max_scale), PAPER_RATIO)
        flips = random.split("flip").bernoulli(0.5, views)
        jitter_random = random.split("jitter")
        jittered = jitter_random.bernoulli(self.jitter_probability, views)
        spread = 0.8 * self.strength
        jitter = jitter_random.uniform(max(0.0, 1 - spread), 1 + spread, views, JITTER_OPERATIONS)
        jitter[..., HUE] = jitter_random.uniform(-0.2 * self.strength, 0.2 * self.strength, views)
        # A uniformly random permutation per view: the ranks of i.i.d. uniform keys.
        order = jitter_random.rand(views, JITTER_OPERATIONS).argsort(dim=-1)
        gray = random.split("gray").bernoulli(self.gray_probability, views)
        drawn = {
            "boxes": boxes,
            "flips": flips,
            "jittered": jittered,
            "jitter": jitter,
            "jitter_order": order,
            "gray": gray,
        }
        if self.blur_probabilities is not None:
            blur_random = random.split("blur")
            chance = torch.tensor(self.blur_probabilities, device=random.device)
            drawn["blurred"] = blur_random.rand(views) < chance
            drawn["sigma"] = blur_random.uniform(*PAPER_SIGMA, views)
        elif self.blur:
            blur_random = random.split("blur")
            drawn["blurred"] = blur_random.bernoulli(0.5, views)
            drawn["sigma"] = blur_random.uniform(*PAPER_SIGMA, views)
        if self.solarize_probabilities is not None:
            chance = torch.tensor(self.solarize_probabilities, device=random.device)
            drawn["solarized"] = random.split("solarize").rand(views) < chance
        return drawn

    def apply(self, images: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        """Make the views of every image with the drawn parameters.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            drawn: from :meth:`draw`.

        Returns:
            ``(B * V, 3, S, S)`` in [0, 1], sample-major: view ``v`` of image ``b`` is row ``b * V + v``.
        """
        size = self.size or images.shape[-1]
        views = resized_crop(images, drawn["boxes"], drawn["flips"], size).flatten(0, 1)  # (B*V, 3, s, s)
        # Bilinear weights sum to 1, but rounding can step a hair outside [0, 1], which the jitter's clips assume.
        views = views.clamp_(0, 1)
        views = color_jitter(
            views,
            drawn["jitter"].flatten(0, 1),
            drawn["jitter_order"].flatten(0, 1),
            drawn["jittered"].flatten(0, 1),
        )
        views = random_grayscale(views, drawn["gray"].flatten(0, 1))
        if self.blurs:
            views = gaussian_blur(
                views, drawn["sigma"].flatten(0, 1), drawn["blurred"].flatten(0, 1), kernel_size_for(size)
            )
        if "solarized" in drawn:
            views = solarize(views, drawn["solarized"].flatten(0, 1))
        return views

    def __call__(self, images: torch.Tensor, random: BatchRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Draw and apply: ``(B, 3, S, S)`` -> views ``(B * V, 3, s, s)`` in [0, 1] and the drawn parameters."""
        drawn = self.draw(random, images.shape[-2], images.shape[-1])
        return self.apply(images, drawn), drawn
