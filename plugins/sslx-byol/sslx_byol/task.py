"""BYOL: Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" (NeurIPS).

Two augmented views of every image. The online network (the shared backbone, a projector and a predictor, both
MLPs) predicts, from one view, the target network's projection of the other view; the target network (a copy of
the backbone and the projector) is not trained by the loss but follows the online network as an exponential moving
average after every optimizer step::

    target = m * target + (1 - m) * online,   m = 1 - (1 - base_momentum) * (cos(pi * k / K) + 1) / 2

with ``k`` the step and ``K`` the run's budget (Sec. 3.2: from ``base_momentum`` to 1 over training). The loss
(:mod:`sslx_byol.loss`) is the symmetrised normalised MSE, ``2 - 2 cos``, with no negatives. Downstream, the
projector, the predictor and the target network are dropped: the representation is the online backbone.

Settings and their paper values (ImageNet, ResNet-50, 224 px, batch 4096, 1000 epochs):

* ``base_momentum`` 0.996 (paper). For small data and short runs 0.99 is better (solo-learn's CIFAR setting; the
  target then follows within about 100 steps instead of 250): ``--set byol.base_momentum=0.99``.
* ``projection_dim`` 256 (paper); the projector is the run's head (default ``mlp``: Linear-BN-ReLU-Linear, hidden
  512) and the predictor the same MLP with ``predictor_hidden`` 512 units. The paper's hidden layers have 4096
  units for ResNet-50's 2048 features: twice the features, as 512 is for ``smallconv``'s 256.
* Augmentations (Appendix B, Table 6), batched on the device by the core's
  :class:`~ssl_engine.api.ViewAugmentation`: random resized crop (area 0.08-1), flip, colour jitter with
  probability 0.8, grayscale 0.2; the paper's asymmetry is kept: Gaussian blur on every first view and 10% of the
  second, solarization on 20% of the second views only.

Departures, each for small images or for this engine:

* Colour jitter: brightness, contrast and saturation 0.4 and hue 0.1 (``strength`` 0.5 of SimCLR's scale); the
  paper's saturation is 0.2, which the shared pipeline has no separate knob for.
* Blur: ``blur=auto`` (the default) blurs as the paper does from 64 px up and not at all below. The paper's sigma
  (0.1-2 px) with a kernel of 10% of the side is a mild blur at 224 px (under 1% of the image); on 32 px images the
  same sigma flattens a 3 px neighbourhood, about a tenth of the image, which wipes out the small objects of the
  data sets these images come from (solo-learn turns BYOL's blur off on CIFAR for the same reason). ``blur=on``
  and ``blur=off`` force it.
* The two views go through each network in one batch of ``2B`` (batch-norm statistics over both views; the paper
  runs the views separately) and the optimizer is the run's (SGD by default, LARS with ``--optimizer lars`` as in
  the paper).
* Under ``torchrun`` each process computes the loss on its own images (BYOL needs no negatives, so the mean over
  processes is the loss of the global batch); batch-norm statistics span all processes with ``--sync-bn``, as in
  the paper.

Checkpoint keys: the online projector and predictor under ``task/byol/projector.`` and ``task/byol/predictor.``,
the target network under ``task/byol/target_backbone.`` and ``task/byol/target_projector.`` (frozen: not in the
main optimizer, updated only by :meth:`BYOLTask.after_step`).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_byol.loss import BYOLLoss

VIEWS = 2


class BYOLTask(api.MomentumTeacherTask):
    """Predict the momentum target network's projection of the other view.

    Views: 2 per image, rows ``2b`` and ``2b + 1`` for image ``b``. Targets: ``(B * 2,)`` int64, the image's row in
    the global batch (both views of an image share it; the loss needs no labels). Modules: ``projector`` (the run's
    head, ``(N, D) -> (N, projection_dim)``), ``predictor`` (``(N, P) -> (N, P)``), and the frozen
    ``target_backbone`` and ``target_projector``. Loss term ``byol`` (Algorithm 1, in [0, 8]); metric ``cosine``,
    the mean cosine similarity of the predictions with their targets.
    """

    name = "byol"
    summary = "bootstrap: predict a momentum target network's projection of the other view (no negatives)"
    paper = "Grill et al. 2020, Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning"
    views = VIEWS
    default_image_size = 32
    default_head = "mlp"
    loss_kind = "regression"
    default_loss = "mse"
    metric = "cosine"
    loss_choice = api.own_loss_choice  # the normalised MSE of Algorithm 1: --loss byol=... is refused
    # The target network starts as the online one and follows it (Sec. 3.1).
    teachers = {"target_backbone": api.SHARED_BACKBONE, "target_projector": "projector"}
    settings = (
        api.momentum_setting(
            "base_momentum",
            0.996,
            "target EMA momentum at step 0, raised to 1 by a cosine over the run (paper: 0.996; 0.99 for small "
            "data and short runs)",
        ),
        api.TaskSetting(
            "projection_dim", int, 256, "output size of the projector and predictor (paper: 256)", minimum=1
        ),
        api.TaskSetting(
            "predictor_hidden", int, 512, "hidden units of the predictor MLP (paper: 4096 for 2048 features)", minimum=1
        ),
        *api.view_settings(),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        # Blur: Table 6's (1.0, 0.1) from 64 px up with blur=auto; solarization drawn even at 0 (always listed).
        self.augmentation = api.view_augmentation(self.hparams, context.image_size, solarize_when_zero=True)
        self.loss = BYOLLoss()

    def build_modules(self) -> nn.ModuleDict:
        dim, projection = self.context.feature_dim, self.hparams["projection_dim"]
        return nn.ModuleDict(
            {
                "projector": self.context.make_head(dim, projection),
                "predictor": api.mlp_head(projection, projection, hidden=self.hparams["predictor_hidden"]),
                "target_backbone": api.freeze(self.context.make_backbone(3)),
                "target_projector": api.freeze(self.context.make_head(dim, projection)),
            }
        )

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Two augmented views of every image, the first as the paper's ``t``, the second as its ``t'``.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness.

        Returns:
            inputs ``(B * 2, 3, S, S)`` normalised; targets ``(B * 2,)`` int64, each view's image row in the global
            batch; extras: the drawn parameters of every view (``boxes``, ``flips``, ``jittered``, ``jitter``,
            ``jitter_order``, ``gray``, ``solarized`` and, when blurring, ``blurred`` and ``sigma``), each
            ``(B, 2, ...)``.
        """
        with torch.autocast(images.device.type, enabled=False):
            views, drawn = self.augmentation(images.float(), random)  # (B*2, 3, S, S)
        rows = random.offset + torch.arange(len(images), device=images.device)  # (B,)
        return api.PretextBatch(api.normalize(views), rows.repeat_interleave(VIEWS), views=VIEWS, extras=drawn)

    def target_projections(self, modules: nn.ModuleDict, inputs: torch.Tensor) -> torch.Tensor:
        """The target network's projections ``(N, P)`` of views ``(N, 3, S, S)``, without gradient."""
        target_backbone: api.Backbone = modules["target_backbone"]  # type: ignore[assignment]
        with torch.no_grad():
            projections: torch.Tensor = modules["target_projector"](target_backbone.pooled(inputs))
        return projections

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Predict each view's target projection of the other view.

        Args:
            backbone: the shared (online) backbone.
            modules: ``projector``, ``predictor``, ``target_backbone``, ``target_projector``.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``byol`` loss term and the ``cosine`` metric; no predictions.
        """
        images = len(batch.inputs) // VIEWS
        predictions = modules["predictor"](modules["projector"](backbone.pooled(batch.inputs)))  # (B*2, P)
        targets = self.target_projections(modules, batch.inputs)  # (B*2, P)
        loss, cosine = self.loss(predictions.view(images, VIEWS, -1), targets.view(images, VIEWS, -1))
        return api.TaskOutput({"byol": loss}, {"cosine": cosine})

    def momentum(self) -> float:
        """The target's momentum at the clock's step (Sec. 3.2)."""
        return api.cosine_momentum(self.hparams["base_momentum"], self.context.clock.progress)

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image and its two views (BYOL has no classes to label: each view's online
        prediction is to match the target network's projection of the other)."""
        caption = (
            "Each view is a random crop, with what else was done to it under it. The online network "
            "predicts, from each view, the momentum target network's projection of the other view of the same "
            "image; there are no negatives and no classes."
        )
        return api.default_drawing(images, batch, None, f"{self.name}: {self.summary}", labels=lambda _: "",
                               caption=caption, notes=api.augmentation_notes(batch.extras))  # fmt: skip
