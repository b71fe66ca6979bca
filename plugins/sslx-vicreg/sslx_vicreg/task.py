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

It trains with LARS unless ``--optimizer`` says otherwise (``default_optimizer``), as the paper does (its
base rate 0.2 x batch / 256 there), here at the engine's LARS rate of 1.0: with the engine's SGD at 0.05 the
terms barely move in 600 steps (the loss from 38.8 to 36.1, the embeddings' std 0.34 to 0.43 against the target 1)
and the linear probe on ``shapes`` fell below the random-init backbone on seed 1 (0.391 against 0.423), while
LARS beats it on both seeds (0.448 against 0.364, 0.472 against 0.423; ``benchmarks/RESULTS.md``).

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

import torch
from torch import nn

from ssl_engine import api
from sslx_vicreg.loss import VICRegLoss

TERMS = ("invariance", "variance", "covariance")


class VICRegTask(api.TwoViewTask):
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
    default_image_size = 32
    default_optimizer = "lars"  # the paper's; SGD at the engine's 0.05 barely trains it (see the module's notes)
    default_head = "projector"
    embedding_dim_setting = "projector_dim"
    loss_choice = api.own_loss_choice  # VICReg computes its own loss: --loss is refused rather than ignored
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
        api.projector_dim_setting("expander"),
        *api.view_settings(strength="BYOL's 0.4, 0.4, 0.2, 0.1 but saturation 0.4 at s = 0.5"),
    )

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

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """The three terms on the global batch's embeddings, each view embedded on its own by the backbone and the
        expander ``modules["head"]`` (``(B, D) -> (B, P)``, ``P = projector_dim``).

        Returns:
            Terms ``invariance``, ``variance``, ``covariance``; metrics ``accuracy`` and ``std``; the cosine
            similarities ``(B * 2, W * B * 2)`` of every local view to every view of the global batch.
        """
        # One pass per view, as the paper's code: batch norm sees one view's batch at a time.
        z_a, z_b = api.per_view_embeddings(backbone, modules["head"], batch.inputs)  # (N, P) each, the global batch
        with torch.autocast(z_a.device.type, enabled=False):
            invariance, variance, covariance = self.loss(z_a, z_b)
            logits = api.view_matching(z_a.detach(), z_b.detach(), len(batch.inputs) // self.views)
            std = torch.cat([z_a.detach(), z_b.detach()], dim=1).std(dim=0).mean()
        losses = {"invariance": invariance, "variance": variance, "covariance": covariance}
        return api.TaskOutput(losses, {"accuracy": api.accuracy(logits, batch.targets), "std": std}, logits)
