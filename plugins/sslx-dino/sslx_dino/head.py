"""DINO's projection head: an MLP, an l2-normalised bottleneck, and a weight-normalised last layer.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (ICCV), Sec. 3.1 and Appendix:
"The projection head consists of a 3-layer multi-layer perceptron (MLP) with hidden dimension 2048 followed by
l2 normalization and a weight normalized fully connected layer with K dimensions". In the authors' code
(``DINOHead``) the MLP's layers are GELU-separated linear layers without batch norm, initialised from a truncated
normal of standard deviation 0.02, and the last layer's weight-norm gain is fixed at 1 (``norm_last_layer``), so
each of the ``K`` outputs is the cosine between the bottleneck and a unit-norm prototype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PAPER_HIDDEN = 2048
HIDDEN = 512  # the small convnet's features are 256-d: a 2048-wide MLP would cost more than a 16 px local crop
INIT_STD = 0.02
PROJECTOR_HELP = f"DINO's paper projector: 3-layer GELU MLP (hidden {HIDDEN}) to the bottleneck, no batch norm"
"""What ``sslx plugins`` says of the head ``dino`` (:func:`dino_projector`)."""


def dino_projector(in_features: int, out_features: int, hidden: int = HIDDEN, layers: int = 3) -> nn.Module:
    """The MLP of DINO's head: ``(N, in_features)`` -> (Linear-GELU) x ``layers - 1`` -> Linear -> ``(N, out)``.

    Registered as the head ``dino`` (``--head dino=dino``); the task's default projector is the core's ``mlp``,
    with batch norm (see :mod:`sslx_dino.task`). Whichever head is chosen maps the backbone's features to the
    bottleneck.

    Args:
        in_features: the backbone's feature size ``D``.
        out_features: the bottleneck size (paper: 256).
        hidden: width of the hidden layers (paper: 2048; here 512, see :data:`HIDDEN`).
        layers: linear layers (paper: 3).
    """
    if layers < 1:
        raise ValueError(f"the projector needs at least one layer, got {layers}")
    modules: list[nn.Module] = []
    size = in_features
    for _ in range(layers - 1):
        modules += [nn.Linear(size, hidden), nn.GELU()]
        size = hidden
    modules.append(nn.Linear(size, out_features))
    projector = nn.Sequential(*modules)
    for module in projector.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=INIT_STD)
            nn.init.zeros_(module.bias)
    return projector


class DINOHead(nn.Module):
    """Projector, l2 normalisation of the bottleneck, then ``K`` weight-normalised prototypes.

    ``logits = g * normalize(W) @ normalize(projector(x))``: row ``k`` of ``W`` ``(K, bottleneck)`` is prototype
    ``k`` divided by its norm (weight normalisation, Salimans & Kingma 2016, over each output's weights as
    ``torch.nn.utils.weight_norm`` does with ``dim=0``); ``g`` is 1 when ``norm_last_layer`` (the paper's default,
    so no gain parameter exists) and a learned ``(K, 1)`` gain started at 1 otherwise.

    Args:
        projector: ``(N, D)`` -> ``(N, bottleneck)`` (the chosen head, :func:`dino_projector` by default).
        bottleneck: the projector's output size.
        prototypes: ``K``, the number of outputs.
        norm_last_layer: keep the prototypes' norm fixed at 1.

    Shapes:
        ``(N, D)`` -> ``(N, K)`` logits, each in [-g, g].
    """

    def __init__(self, projector: nn.Module, bottleneck: int, prototypes: int, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.projector = projector
        # nn.Linear's own initialisation, as in the authors' code (their truncated-normal init skips this layer).
        self.last_layer = nn.Linear(bottleneck, prototypes, bias=False)
        self.gain = None if norm_last_layer else nn.Parameter(torch.ones(prototypes, 1))

    def forward(self, features: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        """Logits ``(N, K)``; with ``freeze_last_layer`` the prototypes (and gain) get a zero gradient.

        The authors drop the last layer's gradient during the first epoch (``cancel_gradients_last_layer``); a zero
        gradient, rather than none, keeps every parameter in the graph (DistributedDataParallel needs it) and
        moves a weight-normalised layer no more: momentum starts at zero and weight decay only rescales ``W``,
        whose rows are normalised.
        """
        bottleneck = F.normalize(self.projector(features), dim=-1)  # (N, bottleneck), unit rows
        weight: torch.Tensor = self.last_layer.weight
        gain: torch.Tensor | None = self.gain
        if freeze_last_layer:
            weight = weight.detach() + 0 * weight
            gain = None if gain is None else gain.detach() + 0 * gain
        weight = F.normalize(weight, dim=1)  # (K, bottleneck), unit prototypes
        if gain is not None:
            weight = gain * weight
        return F.linear(bottleneck, weight)  # (N, K)
