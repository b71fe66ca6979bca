"""Image reconstruction as a pretext task: the encoder's spatial map decoded back into the whole image.

Context encoders (Pathak, Krähenbühl, Donahue, Darrell & Efros 2016, "Context Encoders: Feature Learning by
Inpainting", CVPR) and SRGAN-style super-resolution (Ledig et al. 2017, "Photo-Realistic Single Image
Super-Resolution Using a Generative Adversarial Network", CVPR) have one shape, which :class:`ReconstructionTask`
holds: the shared backbone encodes a degraded image (a region removed, the detail blurred away), a decoder head on
its spatial map alone makes an image of the input's size, the task turns that into its reconstruction and an l2
term in the normalised space, and optionally a discriminator (:mod:`ssl_engine.adversarial`) judges
reconstructions against the originals. The pretext metric is the PSNR of the reconstruction, shown beside the PSNR
of the degraded input: the baseline to beat.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from PIL import Image
from torch import nn

from ssl_engine.adversarial import adversarial_modules, discriminator_terms, generator_terms
from ssl_engine.backbones.base import Backbone
from ssl_engine.drawing import default_drawing
from ssl_engine.images import denormalize
from ssl_engine.metrics.psnr import masked_psnr, psnr
from ssl_engine.task import PretextBatch, PretextTask, TaskOutput


def reconstruction_psnr(images: torch.Tensor, originals: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """PSNR in dB of normalised images against the originals, over ``region`` or the whole images.

    Args:
        images: ``(B, 3, S, S)`` normalised (a reconstruction or a degraded input); clamped to [0, 1] once
            denormalised, as a real image can't leave the range.
        originals: ``(B, 3, S, S)`` in [0, 1].
        region: ``(B, 1, S, S)`` bool, the pixels scored (:func:`~ssl_engine.metrics.psnr.masked_psnr`), or ``None``
            for whole images (:func:`~ssl_engine.metrics.psnr.psnr`).

    Returns:
        A detached scalar, the mean over the batch.
    """
    shown = denormalize(images).clamp(0, 1)
    return psnr(shown, originals) if region is None else masked_psnr(shown, originals, region)


class ReconstructionTask(PretextTask):
    """A pretext task rebuilding each image from a degraded copy, optionally against a discriminator.

    A subclass declares its name, paper and settings (a bool ``adversarial`` adds the discriminator), sets
    ``loss_weights`` for its terms and ``adversarial``, and writes :meth:`pseudo_labels` (inputs: the degraded
    images, normalised, ``(B, 3, S, S)``; targets: the originals, normalised) and :meth:`reconstruct`;
    :meth:`scored_region` limits the PSNR to part of each image (an inpainted hole).

    Views: 1 per image. Modules: ``decoder`` (the ``upconv`` head by default) from the backbone's map
    ``(B, D, S/stride, S/stride)`` to ``(B, 3, S, S)``; aux (only with ``adversarial=true``): ``discriminator``,
    whose term is logged as ``NAME/discriminator``. Loss terms: those of :meth:`reconstruct` and ``adversarial``.
    Metric: ``psnr`` of the reconstruction in dB on [0, 1] images, beside ``BASELINE_psnr``, the same for the
    degraded input.

    Class attributes:
        baseline: what the degraded input is called in its metric's key (``"bicubic"``: ``bicubic_psnr``).
    """

    views = 1
    min_image_size = 16
    default_image_size = 32
    head_kind = "decoder"
    default_head = "upconv"
    loss_kind = "regression"
    default_loss = "mse"
    metric = "psnr"
    baseline: ClassVar[str] = "input"

    def build_modules(self) -> nn.ModuleDict:
        context = self.context
        decoder = context.make_head(context.feature_dim, context.in_channels, context.feature_stride)
        return nn.ModuleDict({"decoder": decoder})

    def build_aux_modules(self) -> nn.ModuleDict:
        return adversarial_modules(self.hparams.get("adversarial", False), self.context.in_channels)

    def reconstruct(self, decoded: torch.Tensor, batch: PretextBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reconstructions and the task's own loss terms, from what the decoder made of the degraded images.

        Args:
            decoded: ``(B, 3, S, S)`` float32, the decoder's output on the encoder's map, cropped to the images.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The reconstructed images ``(B, 3, S, S)``, normalised, and the named loss terms (scalars) scoring them.
        """
        raise NotImplementedError

    def scored_region(self, batch: PretextBatch) -> torch.Tensor | None:
        """The pixels the PSNR metrics score, ``(B, 1, S, S)`` bool, or ``None`` (the default) for whole images."""
        return None

    def forward(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch
    ) -> TaskOutput:
        """Encode the degraded images, decode, reconstruct, score (and, with a discriminator, fool it).

        Args:
            backbone: the shared encoder.
            modules: ``{"decoder": (B, D, h, w) -> (B, 3, >= S, >= S)}``.
            aux: ``{"discriminator": ...}`` with ``adversarial=true``, else empty.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The terms of :meth:`reconstruct` (and ``adversarial``), metrics ``psnr`` and ``BASELINE_psnr`` (dB, over
            :meth:`scored_region`), and the reconstructions ``(B, 3, S, S)`` (normalised) as predictions.
        """
        size = batch.inputs.shape[-1]
        features = backbone(batch.inputs)  # (B, D, ceil(S/stride), ceil(S/stride)): the encoder sees no more
        # A decoder's output is a multiple of the stride; its top-left S x S lines up with the image.
        decoded = modules["decoder"](features)[..., :size, :size]  # (B, 3, S, S)
        reconstructions, losses = self.reconstruct(decoded.float(), batch)
        losses = {**losses, **generator_terms(aux, reconstructions)}
        originals, region = denormalize(batch.targets.float()), self.scored_region(batch)
        metrics = {
            "psnr": reconstruction_psnr(reconstructions, originals, region),
            f"{self.baseline}_psnr": reconstruction_psnr(batch.inputs.float(), originals, region),
        }
        return TaskOutput(losses, metrics, reconstructions)

    def aux_losses(self, aux: nn.ModuleDict, batch: PretextBatch, output: TaskOutput) -> dict[str, torch.Tensor]:
        """The discriminator's real-vs-reconstructed loss, on detached reconstructions (empty without one)."""
        return discriminator_terms(aux, batch.targets, output.predictions)

    def draw_reconstruction(
        self,
        images: torch.Tensor,
        batch: PretextBatch,
        output: TaskOutput | None,
        headings: tuple[str, str],
        caption: str,
    ) -> Image.Image:
        """The picture :meth:`draw` makes: each image, the network's degraded input and, after a run, its
        reconstruction (:func:`~ssl_engine.drawing.default_drawing`).

        Args:
            images: the originals ``(N, 3, S, S)`` in [0, 1].
            batch: :meth:`pseudo_labels` of those images.
            output: the model's output on the batch after a run (``None`` before training).
            headings: the input's column heading and the reconstruction's.
            caption: what the input shows, under the rows.
        """
        predictions = output.predictions if output is not None else None
        header = ["original", headings[0]] + ([headings[1]] if predictions is not None else [])
        title = f"{self.name}: {self.summary}"
        return default_drawing(images, batch, predictions, title, header=header, caption=caption)
