"""The GPU's channels-last layout on the CPU (``SSLX_CHANNELS_LAST=1``): the model and every batch are kept NHWC, and
training gives what the default layout gives, within float32 rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_engine.testing import ReferenceTask, prepare
from ssl_engine.train.memory_format import SWITCH, uses_channels_last


class PlainTask(ReferenceTask):
    name = "plain"


def trained(folder: Path, monkeypatch: pytest.MonkeyPatch, switch: str) -> tuple[dict[str, torch.Tensor], bool]:
    monkeypatch.setenv(SWITCH, switch)
    trainer = prepare(PlainTask).trainer(folder, steps=3)
    seen: list[bool] = []
    original = trainer.step_module.forward

    def recording(images: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(trainer.step_module, "forward", recording)
    trainer.train()
    convs = [module for module in trainer.model.modules() if isinstance(module, nn.Conv2d)]
    weights_nhwc = all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    assert seen and len(set(seen)) == 1 and seen[0] == weights_nhwc
    return {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}, weights_nhwc


def test_the_switch_and_the_device_decide_the_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWITCH, raising=False)
    assert not uses_channels_last(torch.device("cpu")) and uses_channels_last(torch.device("cuda"))
    monkeypatch.setenv(SWITCH, "1")
    assert uses_channels_last(torch.device("cpu"))
    monkeypatch.setenv(SWITCH, "0")
    assert not uses_channels_last(torch.device("cuda"))


def test_channels_last_trains_as_the_default_layout_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nchw, nchw_layout = trained(tmp_path / "nchw", monkeypatch, "0")
    nhwc, nhwc_layout = trained(tmp_path / "nhwc", monkeypatch, "1")
    assert not nchw_layout and nhwc_layout
    assert nchw.keys() == nhwc.keys()
    for key, value in nchw.items():
        torch.testing.assert_close(nhwc[key], value, atol=1e-4, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
