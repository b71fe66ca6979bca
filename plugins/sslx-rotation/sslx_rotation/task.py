"""Rotation prediction: Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by Predicting
Image Rotations" (ICLR).

Each image is shown at 0, 90, 180 and 270 degrees; a classifier on the pooled backbone features predicts which.
The paper found feeding all four rotations of an image in the same batch best (Sec. 3.2); ``all_rotations=false``
draws one random rotation per image instead.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from ssl_engine import api

ROTATIONS = 4


def rotation_label(k: int) -> str:
    """Rotation class ``k`` in degrees (counter-clockwise): ``"90°"``."""
    return f"{90 * k}°"


def rotate_all(images: torch.Tensor) -> torch.Tensor:
    """Every image at the four rotations: ``(B, C, H, W)`` -> ``(B, 4, C, H, W)`` (square images).

    Rotation ``k`` is ``k * 90`` degrees counter-clockwise.
    """
    return torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)], dim=1)


class RotationTask(api.PretextTask):
    """Predict the rotation (0, 90, 180, 270 degrees) applied to an image.

    Views: 4 per image (or 1 with ``all_rotations=false``); head on pooled features -> 4 logits; cross-entropy.
    """

    name = "rotation"
    summary = "predict the rotation (0/90/180/270) of each image"
    paper = "Gidaris, Singh & Komodakis 2018, Unsupervised Representation Learning by Predicting Image Rotations"
    views = ROTATIONS
    min_image_size = 8
    default_image_size = 32
    settings = (
        api.TaskSetting(
            "all_rotations",
            bool,
            True,
            "all four rotations of every image in the batch (paper), or one random rotation per image",
        ),
    )

    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"head": self.context.make_head(self.context.feature_dim, ROTATIONS)})

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        batch = images.shape[0]
        rotated = rotate_all(api.normalize(images))  # (B, 4, C, H, W)
        if self.hparams["all_rotations"]:
            targets = torch.arange(ROTATIONS, device=images.device).repeat(batch)  # (B*4,)
            return api.PretextBatch(rotated.flatten(0, 1), targets, views=ROTATIONS)
        targets = random.randint(0, ROTATIONS)  # (B,)
        chosen = rotated[torch.arange(batch, device=images.device), targets]  # (B, C, H, W)
        return api.PretextBatch(chosen, targets, views=1)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        logits = modules["head"](backbone.pooled(batch.inputs))  # (B*views, 4)
        loss = self.context.loss_fn(logits.float(), batch.targets)
        return api.TaskOutput({"rotation": loss}, {"accuracy": api.accuracy(logits, batch.targets)}, logits)

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image and its rotations, labelled in degrees (after a run: the angle the model
        named, crossed out in red when wrong)."""
        predictions = output.predictions if output is not None else None
        caption = (
            "Each view is the image turned counter-clockwise by the angle under it; the network sees only the "
            "view and names the angle."
        )
        if not self.hparams["all_rotations"]:
            caption = "One random rotation per image (all_rotations=false). " + caption
        return api.default_drawing(
            images, batch, predictions, f"{self.name}: {self.summary}", labels=rotation_label, caption=caption
        )
