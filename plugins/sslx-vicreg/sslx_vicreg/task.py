"""VICReg: Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning" (ICLR).

Two random views of every image go through the backbone and an expander (three linear layers, batch norm and
ReLU after the first two: the core's ``projector`` head); three terms (:mod:`sslx_vicreg.loss`) shape the
embeddings: invariance (the two views' embeddings close, mean squared error), variance (a hinge keeping each
dimension's standard deviation over the batch above ``gamma``, against collapse) and covariance (the dimensions
decorrelated), each logged as its own loss term and weighted 25, 25 and 1 as in the paper. No negatives, no
momentum encoder, no batch-normalised embeddings in the loss. Downstream the expander is dropped: the
representation is the backbone's pooled output.

Following the paper (and its code):

* each view goes through the backbone and the expander on its own (batch norm sees one view's batch at a time);
* under torchrun the embeddings of every process are gathered before the loss, as the paper's code does
  (``FullGatherLayer``): variance and covariance are over the global batch, and each process's terms are the
  global ones. The expander's own batch norms stay per process unless ``--sync-bn`` is given;
* augmentations are BYOL's, as in the paper (Appendix C.1): random resized crop (0.08-1), flip, colour jitter
  (p 0.8), grayscale (p 0.2), Gaussian blur (p 1.0 on the first view, 0.1 on the second), solarization (p 0 and
  0.2), batched on the device by the core's :class:`~ssl_engine.api.ViewAugmentation`.

Departures, for this engine's small images and CPU budgets (every one a setting):

* ``projector_dim`` 1024 instead of 8192 (8192-8192-8192 on a 2048-d ResNet-50; here the default backbone gives
  256-d features and batches are 64). The paper (Table 8) finds accuracy rising with the width; 1024 is what
  the budget allows. The weights stay the paper's: every term is a mean over dimensions, so they don't depend on
  the width.
* the variance term is ``v(Z) + v(Z')`` as in the paper's Eq. 6 and Algorithm 1; the released code halves it.
* colour jitter: the core's pipeline draws brightness, contrast and saturation from one range, so ``strength``
  0.5 gives brightness and contrast 0.4 and hue 0.1 as in BYOL, but saturation 0.4 instead of 0.2.
* blur: ``blur=auto`` (the default) blurs as the paper does from 64 px up and not at all below, as BYOL's plugin
  does: the paper's sigma (0.1-2 px) is mild at 224 px but flattens a tenth of a 32 px image, wiping out small
  objects (solo-learn turns the blur off on CIFAR for the same reason). ``blur=on`` and ``blur=off`` force it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ssl_engine import api
from sslx_vicreg.loss import VICRegLoss

VIEWS = 2
TERMS = ("invariance", "variance", "covariance")


def view_matching(z_a: torch.Tensor, z_b: torch.Tensor, count: int) -> torch.Tensor:
    """Cosine similarities of this process's views to every view of the global batch (a monitor, not the loss).

    Args:
        z_a, z_b: ``(N, P)``, the global batch's embeddings of the first and second views, rank-major.
        count: images on this process ``B`` (the same on every process).

    Returns:
        ``(2B, 2N)``: row ``2b + v`` is view ``v`` of local image ``b``, column ``2n + v'`` view ``v'`` of global
        image ``n``; ``-inf`` at each view's own column, so ``argmax`` is its nearest other view.
    """
    first = torch.distributed.get_rank() * count if api.is_distributed() else 0
    views = F.normalize(torch.stack([z_a, z_b], dim=1).flatten(0, 1), dim=1)  # (2N, P), sample-major
    own = 2 * first + torch.arange(2 * count, device=views.device)  # (2B,)
    logits = views[own] @ views.T  # (2B, 2N)
    return logits.scatter(1, own[:, None], float("-inf"))


class VICRegTask(api.PretextTask):
    """Keep the two views' embeddings close while each dimension varies over the batch and no two covary.

    Views: 2 per image, rows ``2b`` and ``2b + 1`` for image ``b``. Targets: ``(B * 2,)``, the global row of each
    view's other view (as SimCLR's), used only by the ``accuracy`` monitor: how often a view's nearest neighbour
    among the ``2N - 1`` other views of the global batch, by cosine similarity of the embeddings, is its twin.

    Head: ``make_head(D, projector_dim)``, by default the registered ``projector`` (three layers, all
    ``projector_dim`` wide). Loss terms: ``invariance``, ``variance``, ``covariance``, weighted by the settings
    ``invariance_weight``, ``variance_weight``, ``covariance_weight`` (paper: 25, 25, 1). Metrics: ``accuracy`` and
    ``std``, the mean standard deviation of the embedding dimensions over the batch (near 0 means collapse).
    """

    name = "vicreg"
    summary = "variance-invariance-covariance: views agree, dimensions vary and decorrelate (VICReg)"
    paper = (
        "Bardes, Ponce & LeCun 2022, VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning"
    )
    views = VIEWS
    default_image_size = 32
    default_head = "projector"
    settings = (
        api.TaskSetting(
            "invariance_weight", float, 25.0, "lambda, weight of the invariance term (paper: 25)", minimum=0
        ),
        api.TaskSetting("variance_weight", float, 25.0, "mu, weight of the variance term (paper: 25)", minimum=0),
        api.TaskSetting("covariance_weight", float, 1.0, "nu, weight of the covariance term (paper: 1)", minimum=0),
        api.TaskSetting(
            "gamma", float, 1.0, "target std of each dimension, must be > 0 (paper: 1)", minimum=0, min_open=True
        ),
        api.TaskSetting(
            "eps",
            float,
            1e-4,
            "added to the variance under the square root, must be > 0 (paper: 1e-4)",
            minimum=0,
            min_open=True,
        ),
        api.TaskSetting(
            "projector_dim",
            int,
            1024,
            "width of the expander's three layers (paper: 8192; smaller here for 32 px data on a CPU)",
            minimum=1,
            maximum=65536,
        ),
        *api.view_settings(strength="BYOL's 0.4, 0.4, 0.2, 0.1 but saturation 0.4 at s = 0.5"),
    )

    @classmethod
    def loss_choice(cls, settings: Mapping[str, Any]) -> tuple[str | None, str]:
        """VICReg computes its own loss: ``--loss`` is refused rather than ignored."""
        return None, cls.default_loss

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        config = self.hparams
        weights = {term: float(config[f"{term}_weight"]) for term in TERMS}
        if min(weights.values()) < 0 or max(weights.values()) <= 0:
            raise api.SettingError(
                f"task {self.name!r}: the weights invariance_weight, variance_weight and covariance_weight must be "
                f">= 0 and not all 0; got {', '.join(f'{w:g}' for w in weights.values())}"
            )
        self.augmentation = api.view_augmentation(config, context.image_size)  # BYOL's blur, from 64 px up with auto
        self.loss = VICRegLoss(config["gamma"], config["eps"])
        self.loss_weights = weights

    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"head": self.context.make_head(self.context.feature_dim, self.hparams["projector_dim"])})

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Two augmented views of every image and the global row of each view's twin.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness.

        Returns:
            inputs ``(B * 2, 3, S, S)`` normalised; targets ``(B * 2,)`` int64; views 2; extras: the drawn
            parameters of every view (:meth:`ViewAugmentation.draw`), each ``(B, 2, ...)``.
        """
        with torch.autocast(images.device.type, enabled=False):
            views, drawn = self.augmentation(images.float(), random)  # (B*2, 3, S, S)
        rows = 2 * random.offset + torch.arange(len(views), device=images.device)  # global rows of these views
        return api.PretextBatch(api.normalize(views), rows ^ 1, views=VIEWS, extras=drawn)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Embed each view, gather the global batch, and compute the three terms.

        Args:
            backbone: the shared backbone.
            modules: ``{"head": (B, D) -> (B, projector_dim)}``.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            Terms ``invariance``, ``variance``, ``covariance``; metrics ``accuracy`` and ``std``; the cosine
            similarities ``(B * 2, W * B * 2)`` of every local view to every view of the global batch.
        """
        views = batch.inputs.unflatten(0, (-1, VIEWS))  # (B, 2, 3, S, S)
        # One pass per view, as the paper's code: batch norm sees one view's batch at a time.
        z_a = modules["head"](backbone.pooled(views[:, 0]))  # (B, P)
        z_b = modules["head"](backbone.pooled(views[:, 1]))  # (B, P)
        with torch.autocast(z_a.device.type, enabled=False):
            z_a = api.gather_from_all_ranks(z_a.float())  # (N, P): the global batch, rank-major
            z_b = api.gather_from_all_ranks(z_b.float())
            invariance, variance, covariance = self.loss(z_a, z_b)
            logits = view_matching(z_a.detach(), z_b.detach(), len(views))
            std = torch.cat([z_a.detach(), z_b.detach()], dim=1).std(dim=0).mean()
        losses = {"invariance": invariance, "variance": variance, "covariance": covariance}
        return api.TaskOutput(losses, {"accuracy": api.accuracy(logits, batch.targets), "std": std}, logits)

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image and its two views; under each view the view it must be matched with (after
        a run: the one the model picked, in red when wrong)."""
        predictions = output.predictions if output is not None else None
        return api.two_view_drawing(images, batch, predictions, f"{self.name}: {self.summary}")
