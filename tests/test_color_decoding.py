"""ColourDecoding (``ssl_engine.color.decoding``): a colour decoder's mode, grid and read-back, from settings."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ssl_engine.api import LAB_SCALE, ColourDecoding, SettingError, ab_bins, output_stride_setting
from ssl_engine.settings import resolve_settings


def decoding(feature_stride: int = 8, **settings: Any) -> ColourDecoding:
    """The decoding of a task named ``paint`` with these settings (defaults: regression, stride 4, T = 0.38)."""
    values = {"loss_mode": "regression", "output_stride": 4, "temperature": 0.38, **settings}
    task = SimpleNamespace(name="paint", hparams=values, context=SimpleNamespace(feature_stride=feature_stride))
    return ColourDecoding.of(task)  # type: ignore[arg-type]


def test_regression_reads_ab_over_10_on_the_output_grid() -> None:
    plain = decoding()
    assert not plain.classify and plain.ab_channels == 2 and plain.scale == 2
    assert plain.output_size(32) == 8 and plain.output_size(30) == 8  # a whole map of the stride-8 backbone
    predictions = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(plain.ab(predictions), predictions * LAB_SCALE)


def test_classification_reads_logits_by_the_annealed_mean_over_the_bins() -> None:
    binned = decoding(loss_mode="classification", output_stride=1, temperature=0.5)
    bins = ab_bins()
    assert binned.classify and binned.ab_channels == bins.classes and binned.scale == 8 and binned.bins is bins
    logits = torch.randn(2, bins.classes, 3, 3)
    expected = torch.empty(2, 2, 3, 3)
    for b in range(2):  # plain reference: the mean of the bin centres under softmax(logits / T), pixel by pixel
        for i in range(3):
            for j in range(3):
                weights = torch.softmax(logits[b, :, i, j] / 0.5, dim=0)
                expected[b, :, i, j] = (weights[:, None] * bins.centres).sum(dim=0)
    torch.testing.assert_close(binned.ab(logits), expected, atol=1e-4, rtol=1e-4)


def test_an_output_stride_that_does_not_divide_the_backbone_stride_is_refused_naming_the_setting() -> None:
    with pytest.raises(SettingError, match="paint.output_stride=16"):
        decoding(output_stride=16)
    setting = output_stride_setting(4, "input pixels per predicted pixel")
    assert resolve_settings("paint", (setting,), {})["output_stride"] == 4
    with pytest.raises(SettingError, match="output_stride"):
        resolve_settings("paint", (setting,), {"output_stride": 3})
