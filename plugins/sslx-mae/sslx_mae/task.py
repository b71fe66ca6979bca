"""Masked autoencoders: He, Chen, Xie, Li, Dollár & Girshick 2022, "Masked Autoencoders Are Scalable Vision
Learners" (CVPR).

The image is cut into the ViT's patches and a large random share of them (75 %) is masked (Sec. 3). The encoder
(the shared backbone, a vision transformer) runs on the visible patches only, so its cost falls with the mask
ratio; a light transformer decoder (:class:`~sslx_mae.decoder.MAEDecoder`) gets the encoded visible tokens and a
shared mask token in place of every masked patch, and predicts the pixels of every patch. The loss is the mean
squared error on the masked patches only, against pixels normalised per patch (their mean and variance; the
paper's "normalized pixels" target, a setting). Downstream the encoder runs on all patches and the representation
is its class token (``backbone.pooled``, Sec. 4's linear probe).

The encoder is reached only through the token interface of :class:`ssl_engine.api.TokenBackbone`
(``tokens``/``encode_tokens``), which timm's ViTs provide (``--backbone timm:vit_tiny_patch16_224``); a
convolutional backbone is refused before training. It trains with AdamW unless ``--optimizer`` says otherwise
(``default_optimizer``), at the engine's AdamW rate of 1e-3; the paper's weight decay of 0.05 is
``--weight-decay 0.05``. Differences from the paper, for small images and CPUs: the
decoder defaults to 2 blocks of width 128 (paper: 8 of 512), and the ViT's patch is 4 px at 32 px (an 8 x 8 grid,
:mod:`ssl_engine.backbones.timm_backbone`).
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_mae.decoder import MAEDecoder
from sslx_mae.masking import random_masking

# Added to the variance of a patch before the square root (the MAE code's 1e-6).
NORM_EPSILON = 1e-6
# The grey that masked patches are drawn in.
MASKED_GREY = 0.5


class ConvolutionalBackboneError(api.SettingError, api.ImageSizeError):
    """MAE asked for on a backbone without the token interface (a convnet): the message says which to use.

    A :class:`SettingError` for the model builder, which passes it on as the user's error (exit 2), and an
    :class:`ImageSizeError` for ``sslx bench --tasks all``, whose ``mae`` row on a convnet reads "n/a" with this
    reason, as a colour task's does on grayscale data.
    """


def refusal(backbone: str) -> str:
    return (
        f"task 'mae' needs a vision transformer backbone that runs on a subset of its patches (the token interface "
        f"of ssl_engine.api.TokenBackbone); {backbone} is convolutional. Use --backbone timm:vit_tiny_patch16_224 "
        "(pip install 'sslx[timm]'), or another task for this backbone"
    )


def gather_patches(patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` ``(B, K)`` of every image's patches ``(B, N, C)`` -> ``(B, K, C)``."""
    return patches.gather(1, indices[..., None].expand(-1, -1, patches.shape[-1]))


def normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each patch's pixels standardised by their own mean and variance: ``(B, N, K)`` -> ``(B, N, K)``."""
    mean = patches.mean(dim=-1, keepdim=True)
    variance = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (variance + NORM_EPSILON).sqrt()


class MAETask(api.PretextTask):
    """Reconstruct the masked patches of each image from the visible ones, the encoder seeing only the visible.

    Views: 1 image per image (normalised); extras ``keep`` ``(B, K)`` and ``hidden`` ``(B, M)`` (the visible and
    the masked patches' indices) and ``mask`` ``(B, N)`` (True on the masked ones). Targets: the pixels of the masked
    patches ``(B, M, p * p * 3)``, in the order of ``hidden``, normalised per patch with ``norm_pix_loss``.
    Modules: ``decoder``. Loss term: ``reconstruction`` (``--loss``, mse by default, on the masked patches).
    Metrics: ``masked_mse`` (the squared error on the masked patches, in the target's units) and
    ``mean_patch_mse``, the same for a baseline predicting each masked patch as the mean of the image's visible
    patches. Predictions: the reconstructed images ``(B, 3, S, S)`` (normalised), visible patches as given.
    """

    name = "mae"
    summary = "reconstruct masked patches, the ViT encoder on the visible ones only (masked autoencoder)"
    paper = "He, Chen, Xie, Li, Dollár & Girshick 2022, Masked Autoencoders Are Scalable Vision Learners"
    views = 1
    min_image_size = 16
    default_image_size = 32
    head_kind = "decoder"  # its decoder is its own (mask tokens on the patch sequence), not a registered head
    default_head = "upconv"
    loss_kind = "regression"
    default_loss = "mse"
    metric = "masked_mse"
    # The paper's optimiser (its Table 8), measured against the engine's SGD in benchmarks/RESULTS.md ("MAE's
    # default optimiser").
    default_optimizer = "adamw"
    settings = (
        api.TaskSetting(
            "mask_ratio",
            float,
            0.75,
            "share of the patches masked, in (0, 1) (paper: 0.75)",
            minimum=0.0,
            maximum=1.0,
        ),
        api.TaskSetting(
            "norm_pix_loss",
            bool,
            True,
            "target: each patch's pixels normalised by their mean and variance (paper's best), else the pixels",
        ),
        api.TaskSetting("decoder_depth", int, 2, "decoder transformer blocks (paper: 8)", minimum=1, maximum=24),
        api.TaskSetting(
            "decoder_width", int, 128, "decoder width, a multiple of 4 and of the heads (paper: 512)", minimum=8
        ),
        api.TaskSetting("decoder_heads", int, 4, "decoder attention heads (paper: 16)", minimum=1),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        ratio = self.hparams["mask_ratio"]
        if not 0.0 < ratio < 1.0:
            raise api.SettingError(
                f"setting mae.mask_ratio must lie strictly between 0 and 1 (a share of the patches masked); got "
                f"{ratio!r}, e.g. --set mae.mask_ratio=0.75"
            )
        width, heads = self.hparams["decoder_width"], self.hparams["decoder_heads"]
        if width % heads or width % 4:
            raise api.SettingError(
                f"setting mae.decoder_width ({width}) must be a multiple of 4 and of mae.decoder_heads ({heads})"
            )
        self.patch_size = context.feature_stride
        if context.image_size % self.patch_size:
            raise api.SettingError(
                f"task 'mae' needs whole patches: image size {context.image_size} px is not a multiple of the "
                f"backbone's {self.patch_size} px patches; change --image-size"
            )
        side = context.image_size // self.patch_size
        self.grid = (side, side)
        self.loss_weights = {"reconstruction": 1.0}

    @property
    def patch_count(self) -> int:
        """Patches per image ``N``."""
        return math.prod(self.grid)

    def check_backbone(self) -> None:
        """Refuse a backbone without the token interface, before training: a copy of the run's backbone is built
        on the meta device (no memory, no random numbers drawn) and looked at. A backbone that can't be built there
        is checked on the first batch instead (:meth:`encoder`)."""
        try:
            with torch.device("meta"):
                probe = self.context.make_backbone(self.context.in_channels)
        except api.SettingError:
            raise
        except Exception:
            return
        if not isinstance(probe, api.TokenBackbone):
            raise ConvolutionalBackboneError(refusal(f"the backbone ({type(probe).__name__})"))

    def build_modules(self) -> nn.ModuleDict:
        self.check_backbone()
        context, config = self.context, self.hparams
        decoder = MAEDecoder(
            context.feature_dim,
            config["decoder_width"],
            config["decoder_depth"],
            config["decoder_heads"],
            self.patch_size * self.patch_size * context.in_channels,
            self.grid,
        )
        return nn.ModuleDict({"decoder": decoder})

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Mask a random share of every image's patches.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: the masks' randomness.

        Returns:
            inputs ``(B, 3, S, S)`` normalised (the encoder is given only the visible patches, through ``keep``);
            targets ``(B, M, p * p * 3)``, the pixels of the masked patches (normalised per patch with
            ``norm_pix_loss``); extras ``keep`` ``(B, K)`` and ``hidden`` ``(B, M)`` int64, ``mask`` ``(B, N)`` bool.
        """
        inputs = api.normalize(images)
        keep, hidden, mask = random_masking(random, self.patch_count, self.hparams["mask_ratio"])
        targets = gather_patches(self.patch_targets(inputs), hidden)  # (B, M, p * p * 3)
        return api.PretextBatch(inputs, targets, views=1, extras={"keep": keep, "hidden": hidden, "mask": mask})

    def patch_targets(self, inputs: torch.Tensor) -> torch.Tensor:
        """What is predicted of every patch: ``(B, 3, S, S)`` -> ``(B, N, p * p * 3)`` pixels, normalised per patch
        with ``norm_pix_loss``."""
        patches = api.patchify(inputs.float(), self.patch_size)
        return normalise_patches(patches) if self.hparams["norm_pix_loss"] else patches

    def encoder(self, backbone: api.Backbone) -> api.TokenBackbone:
        if not isinstance(backbone, api.TokenBackbone):
            raise TypeError(refusal(f"the backbone ({type(backbone).__name__})"))
        return backbone

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Encode the visible patches, decode every patch, score the masked ones.

        Returns:
            Loss term ``reconstruction``; metrics ``masked_mse`` and ``mean_patch_mse``; the reconstructed images
            ``(B, 3, S, S)`` (normalised) as predictions.
        """
        encoder = self.encoder(backbone)
        keep, hidden, mask = batch.extras["keep"], batch.extras["hidden"], batch.extras["mask"]
        tokens = encoder.tokens(batch.inputs)  # (B, N, D)
        encoded = encoder.encode_tokens(tokens, keep)  # (B, P + K, D): the visible patches only
        predicted = modules["decoder"](encoded, keep).float()  # (B, N, p * p * 3)
        guessed, targets = gather_patches(predicted, hidden), batch.targets.float()  # (B, M, p * p * 3) each
        reconstruction = self.context.loss_fn(guessed, targets)
        with torch.no_grad():
            # The baseline: each masked patch predicted as the mean of the image's visible patches.
            mean_patch = gather_patches(self.patch_targets(batch.inputs), keep).mean(dim=1, keepdim=True)
            metrics = {
                "masked_mse": (guessed - targets).pow(2).mean(),
                "mean_patch_mse": (mean_patch - targets).pow(2).mean(),
            }
            images = self.reconstruct(batch.inputs, predicted.detach(), mask)
        return api.TaskOutput({"reconstruction": reconstruction}, metrics, images)

    def reconstruct(self, inputs: torch.Tensor, predicted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` (normalised) with the masked patches predicted, the visible ones as given.

        With ``norm_pix_loss`` the predictions are per-patch standardised pixels; as in the paper's figures they are
        put back in pixel units with the original patch's mean and standard deviation.
        """
        patches = api.patchify(inputs.float(), self.patch_size)  # (B, N, p * p * 3)
        if self.hparams["norm_pix_loss"]:
            mean = patches.mean(dim=-1, keepdim=True)
            deviation = (patches.var(dim=-1, keepdim=True) + NORM_EPSILON).sqrt()
            predicted = predicted * deviation + mean
        filled = torch.where(mask[..., None], predicted, patches)
        return api.unpatchify(filled, self.patch_size, self.grid, inputs.shape[1])

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """Rows of original | masked (visible patches, the masked ones grey) | reconstruction (after a run)."""
        mask = batch.extras["mask"]  # (B, N)
        pixels = mask[..., None].float().expand(-1, -1, self.patch_size * self.patch_size * images.shape[1])
        hidden = api.unpatchify(pixels, self.patch_size, self.grid, images.shape[1]).bool()  # (B, 3, S, S)
        masked = images.masked_fill(hidden, MASKED_GREY)
        shown = api.PretextBatch(masked, batch.targets, views=1)
        reconstruction = None
        if output is not None and output.predictions is not None:
            reconstruction = api.denormalize(output.predictions.float()).clamp(0, 1)
        ratio = self.hparams["mask_ratio"]
        title = f"{self.name}: {self.summary}"
        header = ["original", f"input: {ratio:.0%} of patches masked"]
        header += ["reconstruction"] if reconstruction is not None else []
        caption = (
            f"Grey: the masked patches ({ratio:.0%}, {self.patch_size} px each); the encoder sees only the others and "
            f"the decoder predicts the masked ones' pixels (after a run: the reconstruction, visible patches as given)."
        )
        return api.default_drawing(images, shown, reconstruction, title, header=header, caption=caption)
