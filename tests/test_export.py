"""Exported ResNet-18 backbones load into torchvision's resnet18 and strictly into timm's as documented and give the
same features; an export that cannot be written is one line, exit 2, and leaves an earlier file whole."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from ssl_engine import load_representation
from ssl_engine.images import normalize
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("reference_cli")]  # end to end, on the kit's task


def pretrained(invoke, run: Path, *options: str) -> None:  # type: ignore[no-untyped-def]
    """One step of the kit's task into ``run`` (``options``: another backbone, image size)."""
    trained = invoke("pretrain", "--task", REFERENCE_TASK, "--data", KIT_DATA, *options, "--steps", "1",
                     "--batch-size", "4", "--no-probe", "--out", run)  # fmt: skip
    assert trained.exit_code == 0, trained.output


def exported_resnet18(invoke, tmp_path: Path, image_size: int) -> tuple[Path, Path, str]:  # type: ignore[no-untyped-def]
    """A ResNet-18 run at ``image_size`` and its export: the run directory, the file and what export printed."""
    run, out = tmp_path / "R", tmp_path / "backbone.safetensors"
    pretrained(invoke, run, "--backbone", "resnet18", "--image-size", str(image_size))
    exported = invoke("export", run, "--out", out)
    assert exported.exit_code == 0, exported.output
    return run, out, exported.output


def with_small_stem(model: torch.nn.Module) -> None:
    """The two changes the export message gives for a run at 64 px or less."""
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()


def assert_same_features(run: Path, model: torch.nn.Module, image_size: int) -> None:
    images = torch.rand(3, 3, image_size, image_size)
    ours = load_representation(run).eval()(images)
    theirs = model.eval()(normalize(images))
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("image_size", [16, 72])  # the small-image stem, and torchvision's own stem
def test_exported_resnet18_loads_into_torchvision_and_matches(invoke, tmp_path: Path, image_size: int) -> None:  # type: ignore[no-untyped-def]
    run, out, printed = exported_resnet18(invoke, tmp_path, image_size)
    assert "torchvision's layout" in printed
    model = torchvision.models.resnet18()
    if image_size <= 64:
        assert "model.maxpool = torch.nn.Identity()" in printed
        with_small_stem(model)
    else:
        assert "maxpool" not in printed
    missing, unexpected = model.load_state_dict(load_file(str(out)), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    model.fc = torch.nn.Identity()  # type: ignore[assignment]
    assert_same_features(run, model, image_size)


def test_non_torchvision_representation_is_exported_in_sslx_layout(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, out = tmp_path / "R", tmp_path / "rep.safetensors"
    pretrained(invoke, run)
    exported = invoke("export", run, "--out", out)
    assert exported.exit_code == 0 and "not a torchvision model" in exported.output
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["layout"] == "sslx"
        representation = load_representation(run)
        assert set(handle.keys()) == set(representation.state_dict())


@pytest.mark.parametrize("image_size", [16, 72])
def test_exported_resnet18_loads_strictly_into_timm_as_said(invoke, tmp_path: Path, image_size: int) -> None:  # type: ignore[no-untyped-def]
    timm = pytest.importorskip("timm")
    run, out, printed = exported_resnet18(invoke, tmp_path, image_size)
    assert "timm.create_model('resnet18', num_classes=0)" in printed
    model = timm.create_model("resnet18", num_classes=0, pretrained=False)
    if image_size <= 64:
        with_small_stem(model)
    model.load_state_dict(load_file(str(out)))  # strict
    assert_same_features(run, model, image_size)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_export_into_a_read_only_directory_is_one_line_and_keeps_the_earlier_file(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, folder = tmp_path / "R", tmp_path / "exports"
    pretrained(invoke, run)
    folder.mkdir()
    earlier = folder / "rep.safetensors"
    earlier.write_bytes(b"an earlier export")
    folder.chmod(0o500)
    try:
        result = invoke("export", run, "--out", earlier)
    finally:
        folder.chmod(0o700)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and f"cannot write --out {earlier}" in result.output
    assert earlier.read_bytes() == b"an earlier export"
    assert sorted(path.name for path in folder.iterdir()) == ["rep.safetensors"]


def test_export_on_a_full_disk_is_one_line_and_keeps_the_earlier_file(invoke, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run, out = tmp_path / "R", tmp_path / "rep.safetensors"
    pretrained(invoke, run)
    out.write_bytes(b"an earlier export")
    real_fsync = os.fsync

    def full_disk(descriptor: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{descriptor}")).name.startswith(".rep.safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", full_disk)
    result = invoke("export", run, "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "No space left on device" in result.output
    assert out.read_bytes() == b"an earlier export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["R", "rep.safetensors"]
