"""Context encoders: Pathak, Krähenbühl, Donahue, Darrell & Efros 2016, "Context Encoders: Feature Learning by
Inpainting" (CVPR).

A region of each image is removed and filled with the data mean (:mod:`sslx_inpainting.masks`); the encoder (the
shared backbone) sees the masked image and a decoder on its spatial feature map alone reconstructs the image,
scored by l2 on the removed region (Sec. 3.2, eq. 1). Optionally a discriminator judges real images against
filled-in ones and the context encoder is also trained to fool it (eq. 2, :mod:`ssl_engine.adversarial`);
the total is ``lambda_rec * L_rec + lambda_adv * L_adv`` with the paper's ``0.999 / 0.001`` (eq. 3, Sec. 4).
The representation for downstream use is the encoder on whole (unmasked) images.

Differences from the paper, forced by the engine's small images or its shared-backbone design:

- The decoder predicts the whole image and only the hole is scored (the paper's decoder outputs just the
  central square), so every mask kind uses the same decoder.
- The paper predicts a region overlapping the context by a few pixels and weighs that border 10x; here
  ``context_weight`` optionally adds l2 on all the visible pixels, off by default so the loss is the hole's.
- Images are standardised with the engine's fixed statistics (:func:`ssl_engine.api.normalize`), so the mean
  image the paper fills in is 0 in the space the network sees, and 0 is what the hole holds.
"""

from __future__ import annotations

import torch
from PIL import Image

from ssl_engine import api
from sslx_inpainting.masks import REGION_GRID, block_masks, center_masks, hole_side, region_masks

MASKS = ("center", "random_blocks", "random_region")
# The data mean after standardisation: what the removed pixels are replaced with.
FILL = 0.0


class InpaintingTask(api.ReconstructionTask):
    """Reconstruct a removed region of each image from its context.

    Views: 1 masked image per image. Modules: ``decoder`` (the ``upconv`` head by default) from the backbone's
    map ``(B, D, S/stride, S/stride)`` to the image ``(B, 3, S, S)``; aux (only with ``adversarial=true``):
    ``discriminator``. Loss terms: ``reconstruction`` (l2 on the hole) and ``adversarial``; the aux term
    ``discriminator`` is logged as ``inpainting/discriminator``. Metric: ``psnr`` on the hole, in dB, beside
    ``mean_fill_psnr``, the same for the mean-filled input (the baseline to beat). The decoding, the adversarial
    branch and the metrics are :class:`ssl_engine.api.ReconstructionTask`'s.
    """

    name = "inpainting"
    summary = "fill in a removed region of each image from its context (context encoder)"
    paper = "Pathak, Krähenbühl, Donahue, Darrell & Efros 2016, Context Encoders: Feature Learning by Inpainting"
    baseline = "mean_fill"
    settings = (
        api.TaskSetting(
            "mask",
            str,
            "center",
            "region removed: the central square, random blocks, or random irregular regions (paper, Sec. 3.3)",
            choices=MASKS,
        ),
        api.TaskSetting(
            "hole_fraction",
            float,
            0.25,
            "share of the image removed (paper: a quarter; the central square has half the side)",
            minimum=0.01,
            maximum=0.75,
        ),
        api.TaskSetting(
            "blocks", int, 4, "squares per image with mask=random_blocks (may overlap)", minimum=1, maximum=16
        ),
        api.TaskSetting(
            "context_weight",
            float,
            0.0,
            "weight of the l2 on the visible pixels, relative to the hole's (0: the hole only)",
            minimum=0.0,
        ),
        api.TaskSetting(
            "adversarial", bool, False, "add the discriminator and the adversarial loss term (paper, eq. 2)"
        ),
        api.TaskSetting("reconstruction_weight", float, 0.999, "lambda_rec (paper: 0.999)", minimum=0.0),
        api.TaskSetting("adversarial_weight", float, 0.001, "lambda_adv (paper: 0.001)", minimum=0.0),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        self.loss_weights = {
            "reconstruction": self.hparams["reconstruction_weight"],
            "adversarial": self.hparams["adversarial_weight"],
        }

    def masks(self, batch: int, image_size: int, random: api.BatchRandom) -> torch.Tensor:
        """The holes of a batch, ``(B, 1, S, S)`` bool, True where pixels are removed (see :mod:`.masks`)."""
        mode, fraction = self.hparams["mask"], self.hparams["hole_fraction"]
        if mode == "center":
            return center_masks(batch, image_size, fraction, random.device)
        if mode == "random_blocks":
            blocks = self.hparams["blocks"]
            side = hole_side(image_size, fraction / blocks)  # so the blocks cover at most `fraction` together
            corners = random.randint(0, image_size - side + 1, blocks, 2)  # (B, K, 2)
            return block_masks(image_size, corners, side)
        return region_masks(random.rand(REGION_GRID, REGION_GRID), image_size, fraction)

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Remove a region of every image and fill it with the mean.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness (unused by the central mask).

        Returns:
            inputs ``(B, 3, S, S)`` normalised with the hole set to the mean (0); targets ``(B, 3, S, S)``, the
            normalised originals; extras ``mask`` ``(B, 1, S, S)`` bool, True on the hole.
        """
        mask = self.masks(images.shape[0], images.shape[-1], random)
        originals = api.normalize(images)
        return api.PretextBatch(originals.masked_fill(mask, FILL), originals, views=1, extras={"mask": mask})

    def reconstruct(
        self, decoded: torch.Tensor, batch: api.PretextBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Paint the decoded hole into the context; the ``reconstruction`` term is the l2 on the hole.

        Args:
            decoded: ``(B, 3, S, S)`` float32, the decoder's whole image.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The filled-in images ``(B, 3, S, S)`` (normalised: the context as given, the hole from the decoder) and
            ``{"reconstruction": ...}``, plus ``context_weight`` times the l2 on the visible pixels when it is set.
        """
        hole = batch.extras["mask"].expand_as(decoded)
        target = batch.targets.float()
        reconstruction = self.context.loss_fn(decoded[hole], target[hole])
        if self.hparams["context_weight"] > 0:
            visible = self.context.loss_fn(decoded[~hole], target[~hole])
            reconstruction = reconstruction + self.hparams["context_weight"] * visible
        filled = torch.where(hole, decoded, batch.inputs.float())  # (B, 3, S, S)
        return filled, {"reconstruction": reconstruction}

    def scored_region(self, batch: api.PretextBatch) -> torch.Tensor:
        """The hole, ``(B, 1, S, S)`` bool: what the PSNR metrics score."""
        return batch.extras["mask"]

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image, the network's input with the region removed and, after a run, the image
        with the region as the network painted it back."""
        caption = (
            f"Grey: the region removed ({self.hparams['mask']} mask), filled with the data set's mean colour; the "
            f"network paints it back from the context around it."
        )
        return self.draw_reconstruction(images, batch, output, ("input: region removed", "painted back"), caption)
