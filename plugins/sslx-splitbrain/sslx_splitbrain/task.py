"""Split-brain autoencoders: Zhang, Isola & Efros 2017, "Split-Brain Autoencoders: Unsupervised Learning by
Cross-Channel Prediction" (CVPR).

The Lab image (:mod:`ssl_engine.color.lab`) is split into its lightness ``L`` and its colour ``ab``. Two disjoint
sub-networks each predict one part from the other: ``F1`` (the run's backbone slot, fed ``L`` as a normalised gray
RGB image) colorizes, predicting ab; ``F2`` (a second backbone of the same kind, built by the task with two input
channels, ab / 10) predicts the lightness. Each has its own decoder on its spatial map. The representation is
the concatenation of both sub-networks' pooled features, so it has seen the whole image.

Losses (Sec. 4.1), two named terms ``l_to_ab`` and ``ab_to_l``:

* ``classification`` (default, the paper's "Split-Brain Auto (cl,cl)"): cross-entropy with one-hot targets,
  ab quantised into the in-gamut bins of side 10 (:mod:`ssl_engine.color.ab_bins`), L into 50 bins of size 2
  (:mod:`sslx_splitbrain.lightness_bins`). The registered classification loss chosen for the task is used for
  both (``cross_entropy``, or e.g. ``--loss splitbrain=label_smoothing``). No class rebalancing: the paper
  uses a "basic 1-hot encoding scheme".
* ``regression`` ("(reg,reg)"): the registered regression loss chosen for the task (``mse``, the paper's l2,
  unless e.g. ``--loss splitbrain=l1``) between predicted and true channels in Lab units / 10; the mode decides
  which kind of loss ``--loss`` must name (:meth:`SplitBrainTask.loss_choice`). The decoders' outputs are read
  with :data:`~ssl_engine.api.REGRESSION_GAIN` so SGD at the engine's rate stays stable.

The paper predicts at a quarter of the input resolution; so does this task by default (``output_stride=4``): at
32 px, batch 64, one CPU thread, a step then costs 0.85x a rotation step. The paper splits one network's every
layer in half, so the two sub-networks together have one network's size; here each is a whole backbone of the run's
kind (the engine builds backbones by input channels only), so the representation has twice the backbone's
features, as does the random-init baseline it is compared with.
Metrics: ``lab_rmse`` (the pretext metric), ``ab_rmse`` and ``l_rmse``, root mean squared errors in Lab units of
the predictions (decoded by the annealed mean, T = 0.38, in classification), and in classification
``ab_accuracy`` and ``l_accuracy``.

The second network makes this task unable to share the backbone slot with other tasks (``shares_backbone``
is False): a mixed run including it is refused before training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_splitbrain.lightness_bins import L_BINS, lightness_centres, quantize_lightness
from sslx_splitbrain.representation import SplitBrainRepresentation

LOSS_MODES = ("classification", "regression")
AB_CHANNELS = 2
SHOWN_LIGHTNESS = 65.0  # the colour half is drawn at one mid lightness, so only its colour shows


class SplitBrainTask(api.PretextTask):
    """Predict ab from L with the backbone and L from ab with a second network; features of both, concatenated.

    Views: 1 per image, the lightness as a normalised gray RGB image ``(B, 3, S, S)`` for the backbone; the
    second network's input ``(B, 2, S, S)`` travels in the batch's extras. Decoders give ``(B, Q or 2, h, w)``
    (ab) and ``(B, 50 or 1, h, w)`` (L), ``h = S / output_stride``.
    """

    name = "splitbrain"
    summary = "two sub-networks predict ab from L and L from ab (Lab); both networks' features, concatenated"
    paper = "Zhang, Isola & Efros 2017, Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction"
    views = 1
    min_image_size = 16
    default_image_size = 32
    needs_color = True
    shares_backbone = False
    head_kind = "decoder"
    default_head = "upconv"
    loss_kind = "classification"
    default_loss = "cross_entropy"
    metric = "lab_rmse"
    settings = (
        api.TaskSetting(
            "loss_mode",
            str,
            "classification",
            "cross-entropy over ab bins and 50 L bins (paper's cl,cl), or l2 regression on both (reg,reg)",
            choices=LOSS_MODES,
        ),
        api.output_stride_setting(
            4, "input pixels per predicted pixel (the paper: 4); must divide the backbone's stride"
        ),
        api.temperature_setting(
            0.38, "classification: temperature T of the annealed mean decoding predictions for the metrics"
        ),
    )

    @classmethod
    def loss_choice(cls, settings: Mapping[str, Any]) -> tuple[str | None, str]:
        """Classification losses (default ``cross_entropy``), or regression ones (``mse``) with loss_mode=regression."""
        if settings["loss_mode"] == "regression":
            return "regression", "mse"
        return cls.loss_kind, cls.default_loss

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        self.decoding = api.ColourDecoding.of(self)

    def build_modules(self) -> nn.ModuleDict:
        """The second sub-network and both decoders, all trained by the main optimizer.

        ``color_backbone`` (F2, ab -> features), ``to_ab`` (decoder on F1's map) and ``to_l`` (decoder on F2's).
        """
        make_head, decoding = self.context.make_head, self.decoding
        color_backbone = self.context.make_backbone(AB_CHANNELS)
        l_outputs = L_BINS if decoding.classify else 1
        return nn.ModuleDict(
            {
                "color_backbone": color_backbone,
                "to_ab": make_head(self.context.feature_dim, decoding.ab_channels, scale=decoding.scale),
                "to_l": make_head(color_backbone.feature_dim, l_outputs, scale=decoding.scale),
            }
        )

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Split the whole batch into lightness and colour, inputs and targets (no randomness).

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: unused.

        Returns:
            inputs ``(B, 3, S, S)`` (the normalised gray image of L, for the backbone). Classification: targets
            ``(B, h, w)`` int64 ab bins, extras ``l_target`` ``(B, h, w)`` int64 L bins. Regression: targets
            ``(B, 2, h, w)`` ab / 10, extras ``l_target`` ``(B, 1, h, w)`` (L - 50) / 10. Both: extras
            ``color_input`` ``(B, 2, S, S)`` (ab / 10, the second network's input) and ``lab`` ``(B, 3, h, w)``
            (Lab area-averaged to the output grid).
        """
        lab = api.rgb_to_lab(images)  # (B, 3, S, S)
        small = api.to_output_grid(lab, self.decoding.output_size(images.shape[-1]))  # (B, 3, h, w)
        extras = {"color_input": api.scale_ab(lab[:, 1:]), "lab": small}
        if self.decoding.classify:
            targets = self.decoding.bins.on(images.device).quantize(small[:, 1:])  # (B, h, w)
            extras["l_target"] = quantize_lightness(small[:, 0])  # (B, h, w)
        else:
            targets = api.scale_ab(small[:, 1:])
            extras["l_target"] = api.scale_lightness(small[:, :1])
        return api.PretextBatch(api.lightness_input(lab), targets, extras=extras)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Both cross-channel predictions and their loss terms.

        Args:
            backbone: F1, the backbone slot (fed L).
            modules: from :meth:`build_modules`.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            Terms ``l_to_ab`` and ``ab_to_l``; the metrics; predictions: the ab decoder's (bin logits
            ``(B, Q, h, w)``, or ab / 10 ``(B, 2, h, w)``).
        """
        ab_outputs = modules["to_ab"](backbone(batch.inputs)).float()  # (B, Q or 2, h, w)
        l_outputs = modules["to_l"](modules["color_backbone"](batch.extras["color_input"])).float()
        l_target = batch.extras["l_target"]
        metrics: dict[str, torch.Tensor] = {}
        if self.decoding.classify:
            losses = {
                "l_to_ab": self.context.loss_fn(ab_outputs, batch.targets),
                "ab_to_l": self.context.loss_fn(l_outputs, l_target),
            }
            centres = lightness_centres(device=l_outputs.device)
            predicted_l = api.annealed_mean(l_outputs.detach(), centres, self.decoding.temperature)
            metrics["ab_accuracy"] = api.accuracy(ab_outputs, batch.targets)
            metrics["l_accuracy"] = api.accuracy(l_outputs, l_target)
        else:
            # Scaled for a stable l2 under SGD, see REGRESSION_GAIN.
            ab_outputs, l_outputs = ab_outputs * api.REGRESSION_GAIN, l_outputs * api.REGRESSION_GAIN
            losses = {
                "l_to_ab": self.context.loss_fn(ab_outputs, batch.targets),
                "ab_to_l": self.context.loss_fn(l_outputs, l_target),
            }
            predicted_l = l_outputs.detach() * api.LAB_SCALE + api.L_OFFSET
        predicted_ab = self.decoding.ab(ab_outputs.detach())
        lab = batch.extras["lab"]
        ab_squared = (predicted_ab - lab[:, 1:]).square().mean()
        l_squared = (predicted_l - lab[:, :1]).square().mean()
        metrics["ab_rmse"] = ab_squared.sqrt()
        metrics["l_rmse"] = l_squared.sqrt()
        metrics["lab_rmse"] = ((2 * ab_squared + l_squared) / 3).sqrt()  # over the three channels
        return api.TaskOutput(losses, metrics, ab_outputs)

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """Original, each sub-network's input (L as gray, ab at one lightness), and F1's colorization."""
        lab = api.rgb_to_lab(images)  # (N, 3, S, S)
        lightness = lab[:, :1]
        columns = [
            ("image", images),
            ("F1 in: L", api.gray_from_lightness(lightness).expand(-1, 3, -1, -1)),
            ("F2 in: ab", api.with_colour(torch.full_like(lightness, SHOWN_LIGHTNESS), lab[:, 1:])),
            ("ab target", api.with_colour(lightness, batch.extras["lab"][:, 1:])),
        ]
        if output is not None and output.predictions is not None:
            columns.append(("ab from L", api.with_colour(lightness, self.decoding.ab(output.predictions.detach()))))
        caption = (
            f"F1 sees the lightness L (grey) and predicts the colour ab; F2 sees ab (drawn at one lightness, "
            f"{SHOWN_LIGHTNESS:g}) and predicts L. Targets are on the decoders' output grid (blocks of "
            f"{self.hparams['output_stride']} px); colours are drawn as they are, so one that regresses to the mean "
            f"looks grey."
        )
        return api.colour_grid(columns, f"{self.name}: {self.summary}", caption=caption)

    def representation(self, backbone: api.Backbone, modules: nn.ModuleDict) -> api.Representation:
        """Both sub-networks on their halves of the Lab image, pooled and concatenated: ``(B, D1 + D2)``."""
        return SplitBrainRepresentation(backbone, cast(api.Backbone, modules["color_backbone"]))
