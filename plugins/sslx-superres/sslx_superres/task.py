"""Super-resolution as a pretext task, after Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution
Using a Generative Adversarial Network" (SRGAN, CVPR).

Each image is downsampled by ``factor`` and brought back to full size bicubically (:mod:`sslx_superres.degrade`);
the encoder (the shared backbone) sees that blurred image and a decoder on its spatial feature map predicts the
residual to the original: ``output = bicubic + decoder(encoder(bicubic))``. The decoder sees nothing but the
encoder's features, so whatever detail is restored went through the encoder. The loss is the pixel l2 (SRGAN's MSE
content loss, eq. 4) plus, optionally, an adversarial term from a discriminator (eqs. 2 and 6,
:mod:`ssl_engine.adversarial`), weighted ``1`` and ``10**-3`` as in the paper's eq. 3. SRGAN itself never
used its network for downstream tasks; here the representation is the encoder on sharp images. SRGAN's VGG
feature ("perceptual") content loss is not used: it would need a pretrained network, which a self-supervised run
must not rely on.

The default factor is 8, not the paper's 4. SRGAN upsamples 24 px crops to 96 px; at this engine's 32 px, a factor
of 4 leaves 8 px images, and what they lack is mostly fine background texture and pixel noise: measured on the
shapes data (before its parts had usual colours) after 200 steps, the output was 0.1 dB above bicubic and a linear
probe of the encoder (a small one: 3000 train, 1000 test images) no better than at its random initialisation, 23.5%
both. At factor 8 the 4 px input keeps the colours and rough layout, and restoring the outline takes knowing the
object: +0.7 dB over bicubic and 30.9% on the same probe after the same 200 steps.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_superres.degrade import bicubic_degrade

# The decoder's last layer starts at this share of its usual initialisation (see shrink_last_layer).
INITIAL_RESIDUAL_SCALE = 0.01


def shrink_last_layer(decoder: nn.Module, scale: float = INITIAL_RESIDUAL_SCALE) -> None:
    """Scale down the weights of the decoder's last (registered) conv or linear layer and zero its bias, so the
    residual starts near 0 and the output near the bicubic image.

    A decoder at its usual initialisation adds noise far stronger than the detail to restore (about 18 dB
    against bicubic's 21 at factor 4), and the first steps would only learn to silence it. Starting next to the
    bicubic image, every step can go to adding detail, as residual networks start their branches at or near
    zero (Goyal et al. 2017 set the last batch norm of each residual block to 0). Not exactly zero here: the
    encoder's gradient passes through this layer.
    """
    layers = [module for module in decoder.modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    if layers:
        with torch.no_grad():
            layers[-1].weight.mul_(scale)
            if layers[-1].bias is not None:
                layers[-1].bias.zero_()


class SuperResolutionTask(api.ReconstructionTask):
    """Restore the detail that bicubic down- and up-sampling removed.

    Views: 1 blurred image per image. Modules: ``decoder`` (the ``upconv`` head by default) from the backbone's
    map ``(B, D, S/stride, S/stride)`` to the residual ``(B, 3, S, S)``; aux (only with ``adversarial=true``):
    ``discriminator``. Loss terms: ``pixel`` (l2, in the normalised space) and ``adversarial``; the aux term
    ``discriminator`` is logged as ``superres/discriminator``. Metric: ``psnr`` of the output in dB on [0, 1]
    images, beside ``bicubic_psnr``, the same for the bicubic input (the baseline to beat). The decoding, the
    adversarial branch and the metrics are :class:`ssl_engine.api.ReconstructionTask`'s.
    """

    name = "superres"
    summary = "restore the detail lost by bicubic downsampling (super-resolution, SRGAN-style)"
    paper = "Ledig et al. 2017, Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network"
    baseline = "bicubic"
    settings = (
        api.TaskSetting(
            "factor",
            int,
            8,
            "downsampling factor r (paper: 4 on 96 px images; 8 suits the default 32 px, see the module)",
            minimum=2,
            maximum=8,
        ),
        api.TaskSetting(
            "adversarial", bool, False, "add the discriminator and the adversarial loss term (paper, eq. 3)"
        ),
        api.TaskSetting("pixel_weight", float, 1.0, "weight of the pixel l2 (paper: 1)", minimum=0.0),
        api.TaskSetting(
            "adversarial_weight", float, 0.001, "weight of the adversarial term (paper: 1e-3)", minimum=0.0
        ),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        self.loss_weights = {"pixel": self.hparams["pixel_weight"], "adversarial": self.hparams["adversarial_weight"]}

    def build_modules(self) -> nn.ModuleDict:
        """The decoder, its last layer shrunk so the output starts next to the bicubic image."""
        modules = super().build_modules()
        shrink_last_layer(modules["decoder"])
        return modules

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Blur every image by bicubic down- and up-sampling (deterministic: ``random`` is not used).

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: unused; the degradation is the same for every image.

        Returns:
            inputs ``(B, 3, S, S)``, the normalised bicubic images; targets ``(B, 3, S, S)``, the normalised
            originals.
        """
        return api.PretextBatch(
            api.normalize(bicubic_degrade(images, self.hparams["factor"])), api.normalize(images), views=1
        )

    def reconstruct(
        self, decoded: torch.Tensor, batch: api.PretextBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Add the decoded residual to the bicubic image; the ``pixel`` term is the l2 to the original.

        Args:
            decoded: ``(B, 3, S, S)`` float32, the residual.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The super-resolved images ``(B, 3, S, S)`` (normalised) and ``{"pixel": ...}``.
        """
        restored = batch.inputs.float() + decoded  # the only path from input to output besides the encoder's
        return restored, {"pixel": self.context.loss_fn(restored, batch.targets.float())}

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image, the network's blurred input and, after a run, the network's restoration."""
        factor = self.hparams["factor"]
        caption = (
            f"Input: the image downsampled {factor}x with a bicubic filter and upsampled back, which removes the "
            f"fine detail the network restores."
        )
        return self.draw_reconstruction(images, batch, output, (f"input: {factor}x down and up", "restored"), caption)
