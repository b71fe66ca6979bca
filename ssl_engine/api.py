"""The public plugin API of sslx: the one module a plugin's code imports from the core.

Everything a pretext-task plugin needs is here under one name, whichever core module it lives in, so plugins
keep working while the core is reorganised, and a plugin never reaches into another plugin (shared pieces, such
as the CIE Lab conversion colorization and split-brain both use, live in the core and are exported here). A
plugin's package imports only this module; its tests may also import :mod:`ssl_engine.testing`, the conformance
kit. ``tests/test_public_api.py`` enforces both for the plugins in this repository and the ``sslx new-plugin``
templates. CONTRIBUTING.md ("The plugin API") lists what each group is for.

Plugins import it as a module, so every core name reads as the core's::

    from ssl_engine import api

    class FlipTask(api.PretextTask): ...
"""

from __future__ import annotations

# Re-exported from where each lives today; when a name moves in the core, only this import changes.
from ssl_engine.adversarial import (
    Discriminator,
    adversarial_modules,
    discriminator_loss,
    discriminator_terms,
    generator_loss,
    generator_terms,
)
from ssl_engine.backbones.base import Backbone
from ssl_engine.backbones.tokens import TokenBackbone, patchify, unpatchify
from ssl_engine.color.ab_bins import ABBins, ab_bins, annealed_mean
from ssl_engine.color.decoding import ColourDecoding
from ssl_engine.color.drawing import colour_grid, with_colour
from ssl_engine.color.lab import (
    L_OFFSET,
    LAB_SCALE,
    gray_from_lightness,
    lab_to_rgb,
    lightness_input,
    lightness_input_from_rgb,
    rgb_to_lab,
    scale_ab,
    scale_lightness,
)
from ssl_engine.color.output_grid import (
    REGRESSION_GAIN,
    decoder_scale,
    output_size,
    output_stride_setting,
    to_output_grid,
)
from ssl_engine.distributed import all_gather_with_grad, gather_from_all_ranks, is_distributed
from ssl_engine.drawing import (
    PictureCell,
    augmentation_notes,
    default_drawing,
    picture_sheet,
    tile_grid,
    to_picture,
    two_view_drawing,
)
from ssl_engine.heads.linear import linear_head
from ssl_engine.heads.mlp import mlp_head
from ssl_engine.heads.projector import projector_head
from ssl_engine.heads.upconv import UpConvDecoder
from ssl_engine.hookspecs import (
    BackboneFactory,
    BackboneRegister,
    DatasetFactory,
    DatasetRegister,
    Evaluator,
    EvaluatorRegister,
    HeadKind,
    HeadRegister,
    LoggerFactory,
    LoggerRegister,
    LossFactory,
    LossKind,
    LossRegister,
    TaskRegister,
    hookimpl,
)
from ssl_engine.images import MEAN, STD, denormalize, normalize, standardize_each, to_float
from ssl_engine.loggers.base import MetricsLogger, RunOutcome
from ssl_engine.metrics.psnr import masked_psnr, psnr
from ssl_engine.momentum import copy_weights, cosine_momentum, ema_update, freeze
from ssl_engine.momentum_teacher import SHARED_BACKBONE, MomentumTeacherTask
from ssl_engine.own_loss import own_loss_choice
from ssl_engine.randomness import BatchRandom
from ssl_engine.reconstruction import ReconstructionTask
from ssl_engine.settings import SettingError, TaskSetting
from ssl_engine.shared_settings import momentum_setting, projector_dim_setting, temperature_setting
from ssl_engine.task import (
    HeadFactory,
    ImageSizeError,
    LossFunction,
    PretextBatch,
    PretextTask,
    Representation,
    StepClock,
    TaskContext,
    TaskDeclarationError,
    TaskOutput,
    accuracy,
)
from ssl_engine.two_view import TwoViewTask, per_view_embeddings, view_matching
from ssl_engine.views.blur import gaussian_blur, kernel_size_for
from ssl_engine.views.color import color_jitter, random_grayscale, solarize
from ssl_engine.views.crop import draw_boxes, resized_crop
from ssl_engine.views.pipeline import ViewAugmentation
from ssl_engine.views.settings import view_augmentation, view_settings

__all__ = [
    # hooks
    "hookimpl",
    "TaskRegister",
    "HeadRegister",
    "LossRegister",
    "BackboneRegister",
    "DatasetRegister",
    "EvaluatorRegister",
    "LoggerRegister",
    "HeadFactory",
    "HeadKind",
    "LossFactory",
    "LossFunction",
    "LossKind",
    "BackboneFactory",
    "DatasetFactory",
    "Evaluator",
    "LoggerFactory",
    "MetricsLogger",
    "RunOutcome",
    # the task contract
    "PretextTask",
    "TaskContext",
    "StepClock",
    "PretextBatch",
    "TaskOutput",
    "Representation",
    "Backbone",
    "TokenBackbone",
    "patchify",
    "unpatchify",
    "TaskSetting",
    "SettingError",
    "ImageSizeError",
    "TaskDeclarationError",
    "accuracy",
    "own_loss_choice",
    "TwoViewTask",
    "MomentumTeacherTask",
    "SHARED_BACKBONE",
    "momentum_setting",
    "temperature_setting",
    "projector_dim_setting",
    # randomness
    "BatchRandom",
    # images
    "MEAN",
    "STD",
    "to_float",
    "normalize",
    "denormalize",
    "standardize_each",
    "default_drawing",
    "picture_sheet",
    "PictureCell",
    "tile_grid",
    "to_picture",
    "augmentation_notes",
    "two_view_drawing",
    # building blocks
    "linear_head",
    "mlp_head",
    "projector_head",
    "UpConvDecoder",
    "Discriminator",
    "adversarial_modules",
    "generator_terms",
    "discriminator_terms",
    "generator_loss",
    "discriminator_loss",
    "psnr",
    "masked_psnr",
    "ReconstructionTask",
    "all_gather_with_grad",
    "gather_from_all_ranks",
    "is_distributed",
    "freeze",
    "copy_weights",
    "ema_update",
    "cosine_momentum",
    "per_view_embeddings",
    "view_matching",
    # view augmentations (SimCLR, BYOL, DINO multi-crop), batched on the device
    "ViewAugmentation",
    "view_settings",
    "view_augmentation",
    "draw_boxes",
    "resized_crop",
    "color_jitter",
    "random_grayscale",
    "solarize",
    "gaussian_blur",
    "kernel_size_for",
    # colour
    "rgb_to_lab",
    "lab_to_rgb",
    "gray_from_lightness",
    "lightness_input",
    "lightness_input_from_rgb",
    "scale_lightness",
    "scale_ab",
    "LAB_SCALE",
    "L_OFFSET",
    "ABBins",
    "ab_bins",
    "annealed_mean",
    "REGRESSION_GAIN",
    "decoder_scale",
    "output_size",
    "to_output_grid",
    "output_stride_setting",
    "ColourDecoding",
    "with_colour",
    "colour_grid",
]
