"""Adversarial training for the tasks that generate images: a discriminator and the two sides of its loss.

A discriminator ``D`` learns to tell real images from generated ones (an inpainted hole, a super-resolved image),
and the generator (the shared encoder and the task's decoder) learns to fool it: ``min_G max_D E[log D(x)] +
E[log(1 - D(G(z)))]`` (Goodfellow et al. 2014, "Generative Adversarial Nets"; used by Pathak et al. 2016, eq. 2,
and Ledig et al. 2017, eq. 2). The generator minimises the non-saturating form ``-log D(G(z))``, which gives it
useful gradients early on. A task returns :func:`adversarial_modules` from
:meth:`ssl_engine.task.PretextTask.build_aux_modules`, adds :func:`generator_terms` to its loss terms in
``forward`` and returns :func:`discriminator_terms` from :meth:`~ssl_engine.task.PretextTask.aux_losses`; the
trainer steps the discriminator with its own optimizer after the main networks. Without the adversarial
branch the aux modules are empty and both term functions give ``{}``.
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
    sees only generated images and the discriminator's own pass real and generated ones, and batch statistics would
    tell those batches apart instead of the images.

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


def adversarial_modules(enabled: bool, in_channels: int = 3) -> nn.ModuleDict:
    """A task's auxiliary modules: ``{"discriminator": Discriminator(in_channels)}`` when ``enabled``, else empty."""
    return nn.ModuleDict({"discriminator": Discriminator(in_channels)} if enabled else {})


def generator_terms(aux: nn.ModuleDict, generated: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"adversarial": -log D(generated)}`` for the task's loss terms (``{}`` without a discriminator).

    ``generated`` ``(B, C, S, S)`` keeps its graph: this term trains the generator through the discriminator.
    """
    if "discriminator" not in aux:
        return {}
    return {"adversarial": generator_loss(aux["discriminator"](generated))}


def discriminator_terms(
    aux: nn.ModuleDict, real: torch.Tensor, generated: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """``{"discriminator": -log D(real) - log(1 - D(generated))}`` for ``aux_losses``, on detached generated
    images ``(B, C, S, S)`` so only the discriminator learns from it (``{}`` without a discriminator)."""
    if "discriminator" not in aux or generated is None:
        return {}
    discriminator = aux["discriminator"]
    fake_logits = discriminator(generated.detach())
    return {"discriminator": discriminator_loss(discriminator(real), fake_logits)}
