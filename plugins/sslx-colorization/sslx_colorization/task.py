"""Colorization: Zhang, Isola & Efros 2016, "Colorful Image Colorization" (ECCV).

Each image is converted to CIE Lab on the device (:mod:`ssl_engine.color.lab`); the network sees only the
lightness ``L`` and a decoder on the backbone's spatial map predicts the colour channels ``ab`` of every pixel.
The lightness is fed as the neutral gray RGB image of the same lightness, normalised like any RGB input, so the
task can share the RGB backbone with other tasks in a mixed run. The representation for downstream use is that
backbone fed the lightness image.

Two losses, chosen with the ``loss_mode`` setting:

* ``regression`` (default, as the lecture presents the method): the registered loss chosen for the task (``mse``
  unless ``--loss colorization=l1``) between the predicted and true ab, both in Lab units divided by 10.
* ``classification`` (the paper's method): ab is quantised into the in-gamut bins of side 10
  (:mod:`ssl_engine.color.ab_bins`), each pixel's target is a soft encoding over its 5 nearest bins (Gaussian,
  sigma 5), the cross-entropy of each pixel is weighted by the rarity of its colour (:mod:`.rebalance`, lambda
  0.5, sigma 5, prior estimated online) and predictions are decoded by the annealed mean (T = 0.38). This loss
  is computed by the task itself: a registered loss takes ``(predictions, targets)`` and can't apply the soft
  targets and per-pixel weights, so ``--loss`` applies to the regression mode only and is refused in this one
  (:meth:`ColorizationTask.loss_choice`).

Colours are predicted for every pixel by default (``output_stride=1``, the lecture's l2 between the colour image and
its prediction); the paper predicts at a quarter of the resolution (``output_stride=4``). Measured at 32 px, batch
64, one CPU thread: a default step costs 0.8x a rotation step; classification costs 2.5x at stride 1, where its
262-way output at full resolution dominates, and 0.5x at stride 4. On the shapes data before its parts had usual
colours, after 150 steps a small linear probe (2000 train / 1000 test images; random init 0.294) gave 0.347 for
regression at stride 1, 0.327 at stride 4, and 0.383 for classification at stride 4.

The pretext metric ``ab_rmse`` is the root mean squared error of the predicted ab, in Lab units, in both modes;
classification also reports ``accuracy``, the share of pixels whose most likely bin is their nearest bin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ssl_engine import api
from sslx_colorization.rebalance import ColourPrior

LOSS_MODES = ("regression", "classification")


class ColorizationTask(api.PretextTask):
    """Predict the ab colour channels of every pixel from the lightness image.

    Views: 1 per image, the lightness as a normalised gray RGB image ``(B, 3, S, S)``. Decoder head on the
    backbone's spatial map -> ``(B, 2, h, w)`` ab (regression) or ``(B, Q, h, w)`` bin logits (classification),
    ``h = S / output_stride``.
    """

    name = "colorization"
    summary = "predict the colours (Lab ab) of each pixel from the lightness image"
    paper = "Zhang, Isola & Efros 2016, Colorful Image Colorization"
    views = 1
    min_image_size = 16
    default_image_size = 32
    needs_color = True
    head_kind = "decoder"
    default_head = "upconv"
    loss_kind = "regression"
    default_loss = "mse"
    metric = "ab_rmse"
    settings = (
        api.TaskSetting(
            "loss_mode",
            str,
            "regression",
            "l2 regression on ab (lecture), or the paper's rebalanced classification over ab bins",
            choices=LOSS_MODES,
        ),
        api.output_stride_setting(
            1, "input pixels per predicted pixel (lecture: 1, the whole image; paper: 4); divides the backbone's stride"
        ),
        api.temperature_setting(
            0.38, "classification: temperature T of the annealed-mean decoding (1 = mean, -> 0 = mode)"
        ),
        api.TaskSetting(
            "soft_neighbours",
            int,
            5,
            "classification: nearest bins sharing each pixel's soft target (1 = one-hot)",
            minimum=1,
            maximum=9,
        ),
        api.TaskSetting(
            "soft_sigma",
            float,
            5.0,
            "classification: Gaussian width (Lab units) of the soft encoding",
            minimum=0.1,
        ),
        api.TaskSetting(
            "rebalance_lambda",
            float,
            0.5,
            "classification: weight of the uniform distribution mixed into the colour prior (1 = no rebalancing)",
            minimum=0.0,
            maximum=1.0,
        ),
        api.TaskSetting(
            "rebalance_sigma",
            float,
            5.0,
            "classification: Gaussian width (Lab units) smoothing the colour prior (0 = none)",
            minimum=0.0,
        ),
    )

    @classmethod
    def loss_choice(cls, settings: Mapping[str, Any]) -> tuple[str | None, str]:
        """Regression losses (default ``mse``); none in ``loss_mode=classification``, whose loss is the task's own."""
        if settings["loss_mode"] == "classification":
            return None, cls.default_loss
        return cls.loss_kind, cls.default_loss

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        self.decoding = api.ColourDecoding.of(self)

    def build_modules(self) -> nn.ModuleDict:
        decoding = self.decoding
        modules: dict[str, nn.Module] = {
            "decoder": self.context.make_head(self.context.feature_dim, decoding.ab_channels, scale=decoding.scale)
        }
        if decoding.classify:
            modules["prior"] = ColourPrior(
                decoding.bins, self.hparams["rebalance_lambda"], self.hparams["rebalance_sigma"]
            )
        return nn.ModuleDict(modules)

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Lightness inputs and colour targets for the whole batch (no randomness: colour is the label).

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: unused.

        Returns:
            inputs ``(B, 3, S, S)``, the normalised gray image of L. Regression: targets ``(B, 2, h, w)``, ab / 10.
            Classification: targets ``(B, h, w)`` int64, the nearest bin; extras ``soft_classes`` and
            ``soft_weights`` ``(B, K, h, w)``, the soft encoding. Both: extras ``ab`` ``(B, 2, h, w)`` in Lab
            units, area-averaged to the output grid.
        """
        lab = api.rgb_to_lab(images)  # (B, 3, S, S)
        inputs = api.lightness_input(lab)
        ab = api.to_output_grid(lab[:, 1:], self.decoding.output_size(images.shape[-1]))  # (B, 2, h, w)
        if not self.decoding.classify:
            return api.PretextBatch(inputs, api.scale_ab(ab), extras={"ab": ab})
        classes, weights = self.decoding.bins.on(images.device).soft_encode(
            ab, self.hparams["soft_neighbours"], self.hparams["soft_sigma"]
        )
        extras = {"ab": ab, "soft_classes": classes, "soft_weights": weights}
        return api.PretextBatch(inputs, classes[:, 0], extras=extras)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Decode colours from the lightness features; the ``color`` loss term and ``ab_rmse``.

        Args:
            backbone: the shared backbone.
            modules: ``{"decoder": (B, D, h', w') -> (B, 2 or Q, h, w)}`` and, for classification, ``"prior"``
                (:class:`ColourPrior`, updated with the batch's bins in training mode).
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``color`` term, ``ab_rmse`` (and ``accuracy`` for classification), and the predictions
            (ab / 10, the decoder's output times :data:`REGRESSION_GAIN`, or the bin logits).
        """
        outputs = modules["decoder"](backbone(batch.inputs)).float()  # (B, 2 or Q, h, w)
        true_ab = batch.extras["ab"]
        metrics: dict[str, torch.Tensor] = {}
        if not self.decoding.classify:
            outputs = outputs * api.REGRESSION_GAIN  # ab / 10; see REGRESSION_GAIN for why the decoder is scaled
            loss = self.context.loss_fn(outputs, batch.targets)
        else:
            loss = self.rebalanced_cross_entropy(outputs, batch, cast(ColourPrior, modules["prior"]))
            metrics["accuracy"] = api.accuracy(outputs, batch.targets)
        metrics["ab_rmse"] = (self.predicted_ab(outputs.detach()) - true_ab).square().mean().sqrt()
        return api.TaskOutput({"color": loss}, metrics, outputs)

    def predicted_ab(self, predictions: torch.Tensor) -> torch.Tensor:
        """One colour per output pixel from :attr:`TaskOutput.predictions`: ``(B, 2, h, w)`` in Lab units.

        Regression predictions are ab / 10; bin logits are decoded by the annealed mean (``temperature``).
        """
        return self.decoding.ab(predictions)

    def rebalanced_cross_entropy(
        self, logits: torch.Tensor, batch: api.PretextBatch, prior: ColourPrior
    ) -> torch.Tensor:
        """Eq. 2 of the paper: ``-mean_pixels w(q*) sum_q Z_q log Zhat_q``.

        Args:
            logits: ``(B, Q, h, w)`` float32.
            batch: with targets ``q*`` ``(B, h, w)`` and the soft encoding ``Z`` in its extras.
            prior: the running colour prior, which first takes in this batch's bins (in training mode).

        Returns:
            The scalar loss.
        """
        if prior.training:
            prior.update(batch.targets)
        log_probabilities = F.log_softmax(logits, dim=1)
        picked = log_probabilities.gather(1, batch.extras["soft_classes"])  # (B, K, h, w)
        cross_entropy = -(batch.extras["soft_weights"] * picked).sum(dim=1)  # (B, h, w)
        weights = prior.weights()[batch.targets]  # (B, h, w)
        return (weights * cross_entropy).mean()

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """Original, the lightness the network sees, the target colours (on the output grid), the prediction."""
        lightness = api.rgb_to_lab(images)[:, :1]  # (N, 1, S, S)
        columns = [
            ("image", images),
            ("input L", api.gray_from_lightness(lightness).expand(-1, 3, -1, -1)),
            ("target", api.with_colour(lightness, batch.extras["ab"])),
        ]
        if output is not None and output.predictions is not None:
            columns.append(("predicted", api.with_colour(lightness, self.predicted_ab(output.predictions.detach()))))
        stride = self.hparams["output_stride"]
        grid = f" (one colour per {stride}x{stride} block: the decoder's output grid)" if stride > 1 else ""
        caption = (
            f"The network sees only the lightness L (grey) and predicts the colour ab of each pixel{grid}; colours "
            f"are drawn as they are, on the true lightness, so a prediction that regresses to the mean looks grey."
        )
        return api.colour_grid(columns, f"{self.name}: {self.summary}", caption=caption)

    def representation(self, backbone: api.Backbone, modules: nn.ModuleDict) -> api.Representation:
        """The backbone fed the lightness image (what it was trained on), pooled."""
        return api.Representation(backbone, prepare=api.lightness_input_from_rgb)
