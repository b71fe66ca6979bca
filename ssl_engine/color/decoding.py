"""How the colour decoders of the Lab tasks predict, and how their predictions read back as colours.

Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization", ECCV) and split-brain autoencoders (Zhang,
Isola & Efros 2017, "Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction", CVPR) decode
colour from a backbone's spatial map in one of two modes, chosen by their ``loss_mode`` setting: regression, ab / 10
per output pixel (:data:`~ssl_engine.color.lab.LAB_SCALE`), or classification, logits over the quantised ab plane
(:class:`~ssl_engine.color.ab_bins.ABBins`) read back by the annealed mean at their ``temperature`` setting (2016,
Sec. 2.3). Either predicts on the output grid of their ``output_stride`` setting
(:mod:`ssl_engine.color.output_grid`). :class:`ColourDecoding` is that choice, made once from a task's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ssl_engine.color.ab_bins import ABBins, ab_bins, annealed_mean
from ssl_engine.color.lab import LAB_SCALE
from ssl_engine.color.output_grid import decoder_scale, output_size

if TYPE_CHECKING:
    from ssl_engine.task import PretextTask

AB_CHANNELS = 2


@dataclass(frozen=True)
class ColourDecoding:
    """The mode, the output grid and the ab bins of a Lab task's colour decoder.

    Attributes:
        classify: ``loss_mode=classification``: the decoder gives logits over :attr:`bins` ``(B, Q, h, w)``;
            otherwise ab / 10 ``(B, 2, h, w)``.
        feature_stride: the backbone's stride.
        output_stride: input pixels per predicted pixel.
        scale: the decoder's upsampling factor, ``feature_stride / output_stride``.
        temperature: ``T`` of the annealed mean reading logits back as colours.
        bins: the in-gamut ab bins (:func:`~ssl_engine.color.ab_bins.ab_bins`).
    """

    classify: bool
    feature_stride: int
    output_stride: int
    scale: int
    temperature: float
    bins: ABBins

    @classmethod
    def of(cls, task: PretextTask) -> ColourDecoding:
        """From a task's ``loss_mode``, ``output_stride`` and ``temperature`` settings and its backbone's stride.

        Raises:
            SettingError: ``output_stride`` does not divide the backbone's stride by a power of 2.
        """
        settings, stride = task.hparams, task.context.feature_stride
        scale = decoder_scale(task.name, stride, settings["output_stride"])
        classify = settings["loss_mode"] == "classification"
        return cls(classify, stride, settings["output_stride"], scale, settings["temperature"], ab_bins())

    @property
    def ab_channels(self) -> int:
        """The colour decoder's output channels: ``Q`` bins, or the 2 of ab."""
        return self.bins.classes if self.classify else AB_CHANNELS

    def output_size(self, image_size: int) -> int:
        """Side of the decoder's output (and of the targets) for images of side ``image_size``."""
        return output_size(image_size, self.feature_stride, self.output_stride)

    def ab(self, predictions: torch.Tensor) -> torch.Tensor:
        """One colour per output pixel from the colour decoder's predictions: ``(B, 2, h, w)`` in Lab units.

        Args:
            predictions: ab / 10 ``(B, 2, h, w)`` (regression), or logits ``(B, Q, h, w)`` (classification), read
                by the annealed mean at :attr:`temperature`.
        """
        if not self.classify:
            return predictions.float() * LAB_SCALE
        return annealed_mean(predictions, self.bins.on(predictions.device).centres, self.temperature)
