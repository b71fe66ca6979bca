"""Barlow Twins: Zbontar, Jing, Misra, LeCun & Deny 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction" (ICML).

Two random views of every image go through the backbone and a projector (three linear layers, batch norm and
ReLU after the first two: the core's ``projector`` head); the loss (:mod:`sslx_barlowtwins.loss`) drives the
cross-correlation matrix of the two views' embeddings, each dimension standardised over the batch, towards the
identity: each dimension invariant to the augmentations, different dimensions decorrelated. No negatives, no
momentum encoder, no predictor. Downstream the projector is dropped: the representation is the backbone's pooled
output.

Following the paper (and its code):

* each view goes through the backbone and the projector on its own, so batch norm normalises each view's batch
  separately, as the paper's ``f(y_a)``, ``f(y_b)`` do;
* under torchrun the embeddings of every process are gathered before the loss (the paper's code all-reduces the
  cross-correlation): the standardisation and ``C`` are over the global batch, and each process's loss is the
  global one. The projector's own batch norms stay per process unless ``--sync-bn`` is given (the paper converts
  them to SyncBatchNorm);
* augmentations are BYOL's, which the paper uses (Appendix, "Image augmentations"): random resized crop (0.08-1),
  flip, colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 1.0 on the first view, 0.1 on the second),
  solarization (p 0 and 0.2), batched on the device by the core's :class:`~ssl_engine.api.ViewAugmentation`.

Departures, for this engine's small images and CPU budgets (every one a setting):

* ``projector_dim`` 256 instead of 8192 (8192-8192-8192 on a 2048-d ResNet-50 with batches of 2048; here the
  default backbone gives 256-d features and batches are 64): three 256-wide layers. The paper (Fig. 4) finds
  accuracy rising with the width at its batch of 2048, but the cross-correlation of a batch of 64 has rank 63 at
  most, so at 1024 most of the matrix the loss drives to the identity is out of reach and the redundancy term is
  mostly sampling noise. Measured on ``shapes`` at the default budget (``benchmarks/RESULTS.md``), seed 1: the
  linear probe 0.375 at 1024 against 0.423 for the random-init backbone, 0.4315 at 256, 0.429 at 128 (lr 0.1);
  seed 0 at 256: 0.410 against 0.3635.
* ``lambda`` 0.0051 as in the paper, kept at the smaller width (solo-learn keeps it at 2048 on CIFAR).
* the loss is divided by ``projector_dim`` (then multiplied by ``scale``, default 1): the paper's sums over
  ``P`` and ``P^2`` entries give gradients about 800 times SimCLR's at ``P = 1024`` (measured at initialisation:
  backbone gradient norm 2550 against 3.3). The paper trains with LARS, whose steps don't depend on the loss's
  scale; with this engine's default SGD such gradients inflate every batch-normalised weight ~40-fold within the
  first steps (measured: conv weight norms 3-9 at initialisation, 160-250 after 600 steps), which stalls learning
  (linear probe 0.30 against 0.36 at random initialisation on ``shapes``). Per dimension, the gradients are
  SimCLR's size (2.5). The logged terms are still the paper's sums; ``--optimizer lars`` trains as the paper does.
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
from sslx_barlowtwins.loss import BarlowTwinsLoss, off_diagonal, standardize_over_batch


class BarlowTwinsTask(api.TwoViewTask):
    """Make the cross-correlation of the two views' embeddings the identity matrix.

    Views: 2 per image, rows ``2b`` and ``2b + 1`` for image ``b``. Targets: ``(B * 2,)``, the global row of each
    view's other view (as SimCLR's), used only by the ``accuracy`` monitor: how often a view's nearest neighbour
    among the ``2N - 1`` other views of the global batch, by cosine similarity of the standardised embeddings
    (what the loss correlates), is its twin.

    Head: ``make_head(D, projector_dim)``, by default the registered ``projector`` (three layers, all
    ``projector_dim`` wide). Loss terms: ``invariance`` ``sum_i (1 - C_ii)^2`` and ``redundancy``
    ``sum_{i != j} C_ij^2``, weighted ``scale / P`` and ``scale * lambda / P`` (Eq. 1 per embedding dimension,
    ``P = projector_dim``). Metrics: ``accuracy``,
    ``on_diagonal`` (mean ``C_ii``, 1 at the optimum) and ``off_diagonal`` (root mean square of the other ``C_ij``).
    """

    name = "barlowtwins"
    summary = "redundancy reduction: the two views' cross-correlation matrix towards the identity (Barlow Twins)"
    paper = "Zbontar, Jing, Misra, LeCun & Deny 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
    default_image_size = 32
    default_head = "projector"
    embedding_dim_setting = "projector_dim"
    loss_choice = api.own_loss_choice  # Barlow Twins computes its own loss: --loss is refused rather than ignored
    settings = (
        api.TaskSetting(
            "lambda",
            float,
            0.0051,
            "weight of the off-diagonal (redundancy) term, must be > 0 (paper: 0.0051 with 8192-d embeddings)",
            minimum=0.0,
            min_open=True,
        ),
        api.projector_dim_setting(default=256),  # not 1024: see the module's notes
        api.TaskSetting(
            "scale",
            float,
            1.0,
            "multiplies the loss, which is Eq. 1 divided by projector_dim (so SGD steps stay sane), must be > 0",
            minimum=0.0,
            min_open=True,
        ),
        *api.view_settings(strength="BYOL's 0.4, 0.4, 0.2, 0.1 but saturation 0.4 at s = 0.5"),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        config = self.hparams
        if config["lambda"] <= 0 or config["scale"] <= 0:  # declared, but a task built by hand is checked too
            raise api.SettingError(f"task {self.name!r}: lambda and scale must be > 0")
        self.augmentation = api.view_augmentation(config, context.image_size)  # BYOL's blur, from 64 px up with auto
        self.loss = BarlowTwinsLoss()
        # Eq. 1 per embedding dimension: SGD-sized gradients at any width (see the module's notes).
        per_dimension = config["scale"] / config["projector_dim"]
        self.loss_weights = {"invariance": per_dimension, "redundancy": per_dimension * config["lambda"]}

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Embed each view on its own through the backbone and the projector ``modules["head"]`` (``(B, D) -> (B, P)``,
        ``P = projector_dim``), gather the global batch, and score its cross-correlation ``C`` ``(P, P)``.

        Returns:
            Terms ``invariance`` and ``redundancy``, metrics ``accuracy``, ``on_diagonal``, ``off_diagonal``, and
            the cosine similarities ``(B * 2, W * B * 2)`` of every local view to every view of the global batch.
        """
        # One pass per view, as the paper's f(y_a), f(y_b): batch norm sees one view's batch at a time.
        z_a, z_b = api.per_view_embeddings(backbone, modules["head"], batch.inputs)  # (N, P) each, the global batch
        with torch.autocast(z_a.device.type, enabled=False):
            invariance, redundancy, correlation = self.loss(z_a, z_b)
            # Matched as the loss sees them, standardised: the raw embeddings may share a large mean direction.
            standardized = standardize_over_batch(z_a.detach()), standardize_over_batch(z_b.detach())
            logits = api.view_matching(*standardized, len(batch.inputs) // self.views)
        size = len(correlation)
        metrics = {
            "accuracy": api.accuracy(logits, batch.targets),
            "on_diagonal": correlation.detach().diagonal().mean(),
            "off_diagonal": (off_diagonal(correlation.detach()).square().sum() / max(1, size * (size - 1))).sqrt(),
        }
        return api.TaskOutput({"invariance": invariance, "redundancy": redundancy}, metrics, logits)
