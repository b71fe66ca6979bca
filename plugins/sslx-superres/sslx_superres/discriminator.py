"""The adversarial branch of super-resolution: a discriminator and the two sides of its loss.

Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network" (CVPR),
Sec. 2.2, eq. 2: a discriminator ``D`` learns to tell real high-resolution images from super-resolved ones, and
the generator ``G`` learns to fool it; ``G`` minimises ``-log D(G(I_LR))`` (eq. 6), the non-saturating form of
Goodfellow et al. 2014. SRGAN's discriminator is a deeper VGG-style net with batch norm and two dense layers; at
the engine's 16-96 px images three strided stages suffice.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

STAGES = 3


class Discriminator(nn.Module):
    """A DCGAN-style convnet judging whole images: ``(N, 3, S, S)`` normalised RGB -> one logit each ``(N,)``.

    Three 4x4 stride-2 conv + LeakyReLU(0.2) stages (``width``, ``2 * width``, ``4 * width`` channels), global
    average pooling and a linear layer, so it works on any ``S >= 8``. Every layer is spectrally normalised (Miyato
    et al. 2018), which bounds how fast the logits can grow: the engine steps auxiliary modules with the run's
    optimizer and learning rate (SGD at 0.05 by default, far above the usual 2e-4 Adam rate of GANs), and without
    the bound a super-resolution run's discriminator blew up within 50 steps. No batch norm: the generator's pass
    sees only super-resolved images and the discriminator's own pass real and super-resolved ones, and batch
    statistics would tell those batches apart instead of the images.

    Args:
        in_channels: channels of the judged images.
        width: channels of the first stage.
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(STAGES):
            conv = nn.Conv2d(channels, width * 2**stage, 4, stride=2, padding=1)
            layers += [spectral_norm(conv), nn.LeakyReLU(0.2)]
            channels = width * 2**stage
        self.features = nn.Sequential(*layers)
        self.classify = spectral_norm(nn.Linear(channels, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images).mean(dim=(2, 3))).squeeze(1)  # (N,)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-log D(fake)``, mean over the batch: small when the discriminator takes the fakes for real."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-log D(real) - log(1 - D(fake))``, each a mean over the batch (the paper's eq. 2, negated for descent)."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float))
    return real + fake
