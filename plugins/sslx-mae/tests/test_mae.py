"""Behaviour of the MAE task: the contract on a ViT, random masking from the batch's randomness, the encoder on the
visible patches only (its FLOPs falling with the ratio), the loss on the masked patches of per-patch normalised
pixels, the decoder, the refusals (a convolutional backbone, a ratio outside (0, 1)), and real CLI runs with
``sslx show`` drawing original / masked / reconstruction."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import sslx_mae.plugin
import torch
from click.testing import CliRunner
from PIL import Image
from sslx_mae.decoder import MAEDecoder, sincos_positions
from sslx_mae.masking import random_masking, visible_count
from sslx_mae.task import ConvolutionalBackboneError, MAETask, normalise_patches
from torch.utils.flop_counter import FlopCounterMode

from ssl_engine.api import BatchRandom, ImageSizeError, SettingError, TokenBackbone, normalize, patchify
from ssl_engine.cli import main
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.testing import check_pretext_task, cli_plugins, prepare
from ssl_engine.train.model import build_model

pytest.importorskip("timm")
torch.set_num_threads(2)

# Two blocks instead of twelve: every code path of ViT-Tiny, in a moment on a shared CPU.
VIT = "timm:vit_tiny_patch16_224?depth=2"


def runtime(backbone: str = VIT, image_size: int = 32, **settings: object):  # type: ignore[no-untyped-def]
    subject = prepare(MAETask, image_size=image_size, settings=settings, plugin=sslx_mae.plugin, backbone=backbone)
    model, task_runtime = subject.build()
    return subject, model, task_runtime


def test_mae_keeps_the_contract_on_a_vit() -> None:
    check_pretext_task(MAETask, plugin=sslx_mae.plugin, backbone=VIT)


# --- masking ---------------------------------------------------------------------------------------------------------
def test_masking_keeps_a_quarter_of_the_patches_and_hides_the_rest() -> None:
    keep, hidden, mask = random_masking(BatchRandom(0, 3, "mae", 5), 64, 0.75)
    assert keep.shape == (5, 16) and hidden.shape == (5, 48) and mask.shape == (5, 64)
    assert torch.equal(torch.cat([keep, hidden], 1).sort(1).values, torch.arange(64).expand(5, -1))
    assert torch.equal(mask.sum(1), torch.full((5,), 48))
    assert not mask.gather(1, keep).any() and mask.gather(1, hidden).all()
    assert (keep.diff(dim=1) > 0).all()  # in increasing order
    assert not torch.equal(keep[0], keep[1])  # every image its own mask
    again, _, _ = random_masking(BatchRandom(0, 3, "mae", 5), 64, 0.75)
    other, _, _ = random_masking(BatchRandom(0, 4, "mae", 5), 64, 0.75)
    assert torch.equal(keep, again) and not torch.equal(keep, other)


@pytest.mark.parametrize(("tokens", "ratio", "visible"), [(64, 0.75, 16), (64, 0.5, 32), (64, 0.999, 1), (4, 0.01, 3)])
def test_at_least_one_patch_is_visible_and_one_masked(tokens: int, ratio: float, visible: int) -> None:
    assert visible_count(tokens, ratio) == visible


# --- the encoder sees the visible patches only -----------------------------------------------------------------------
def test_the_encoder_runs_on_the_visible_patches_only_and_its_flops_fall_with_the_ratio() -> None:
    flops = {}
    for ratio in (0.5, 0.75):
        subject, model, task_runtime = runtime(mask_ratio=ratio)
        batch = task_runtime.task.pseudo_labels(subject.images, subject.random())
        lengths: list[int] = []

        def record(_: object, args: tuple[torch.Tensor, ...], seen: list[int] = lengths) -> None:
            seen.append(args[0].shape[1])

        hook = model.backbone.model.blocks[0].register_forward_pre_hook(record)
        counter = FlopCounterMode(display=False)
        with counter:
            task_runtime.task.forward(model.backbone, task_runtime.modules, task_runtime.aux, batch)
        hook.remove()
        assert lengths == [1 + visible_count(64, ratio)]  # the class token and the visible patches, nothing else
        encoder = FlopCounterMode(display=False)
        keep = batch.extras["keep"]
        with torch.no_grad(), encoder:
            model.backbone.encode_tokens(model.backbone.tokens(batch.inputs), keep)
        flops[ratio] = encoder.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as full:
        model.backbone.encode_tokens(model.backbone.tokens(batch.inputs))
    assert flops[0.75] < 0.6 * flops[0.5] and flops[0.5] < 0.6 * full.get_total_flops()


def test_the_loss_is_on_the_masked_patches_of_per_patch_normalised_pixels() -> None:
    subject, model, task_runtime = runtime()
    task = task_runtime.task
    batch = task.pseudo_labels(subject.images, subject.random())
    hidden = batch.extras["hidden"]
    patches = patchify(normalize(subject.images), 4)  # (B, 64, 48)
    expected = normalise_patches(patches).gather(1, hidden[..., None].expand(-1, -1, 48))
    assert batch.targets.shape == (4, 48, 48) and torch.allclose(batch.targets, expected)
    assert torch.allclose(batch.targets.mean(-1), torch.zeros(4, 48), atol=1e-5)
    output = task.forward(model.backbone, task_runtime.modules, task_runtime.aux, batch)
    predicted = task_runtime.modules["decoder"](
        model.backbone.encode_tokens(model.backbone.tokens(batch.inputs), batch.extras["keep"]), batch.extras["keep"]
    )
    guessed = predicted.gather(1, hidden[..., None].expand(-1, -1, 48))
    assert torch.allclose(output.losses["reconstruction"], ((guessed - batch.targets) ** 2).mean(), atol=1e-6)
    assert output.predictions is not None and output.predictions.shape == (4, 3, 32, 32)
    # The reconstruction keeps the visible patches as given.
    visible = ~batch.extras["mask"]
    assert torch.allclose(patchify(output.predictions, 4)[visible], patches[visible], atol=1e-5)


def test_pixels_are_the_target_without_norm_pix_loss() -> None:
    subject, _, task_runtime = runtime(norm_pix_loss=False)
    batch = task_runtime.task.pseudo_labels(subject.images, subject.random())
    patches = patchify(normalize(subject.images), 4)
    assert torch.allclose(batch.targets, patches.gather(1, batch.extras["hidden"][..., None].expand(-1, -1, 48)))


def test_the_decoder_fills_mask_tokens_in_and_predicts_every_patch() -> None:
    decoder = MAEDecoder(192, 32, 1, 4, 48, (8, 8))
    encoded = torch.randn(2, 1 + 16, 192)
    keep = torch.stack([torch.randperm(64)[:16].sort().values for _ in range(2)])
    assert decoder(encoded, keep).shape == (2, 64, 48)
    positions = sincos_positions(32, (8, 8))
    assert positions.shape == (64, 32) and len({tuple(row.tolist()) for row in positions}) == 64


# --- refusals --------------------------------------------------------------------------------------------------------
def test_a_convolutional_backbone_is_refused_before_training() -> None:
    subject = prepare(MAETask, plugin=sslx_mae.plugin)
    with pytest.raises(ConvolutionalBackboneError, match="needs a vision transformer") as raised:
        build_model(PretrainConfig([TaskSpec("mae")], backbone="smallconv"), subject.registry, 32)
    assert "--backbone timm:vit_tiny_patch16_224" in str(raised.value)
    assert isinstance(raised.value, ImageSizeError)  # so `sslx bench --tasks all` on a convnet gives mae an n/a row


def test_the_backbone_check_draws_no_random_numbers() -> None:
    subject = prepare(MAETask, plugin=sslx_mae.plugin, backbone=VIT)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    task = subject.build()[1].task
    torch.set_rng_state(state)
    task.check_backbone()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_a_mask_ratio_outside_0_1_is_refused(ratio: float) -> None:
    subject = prepare(MAETask, plugin=sslx_mae.plugin, backbone=VIT, settings={"mask_ratio": ratio})
    with pytest.raises(SettingError, match="mask_ratio"):
        build_model(subject.config([subject.spec()]), subject.registry, 32)


def invoke(*args: object):  # type: ignore[no-untyped-def]
    """``sslx ARGS`` in this process, seeing the core and this plugin (installed or not)."""
    with cli_plugins(("mae", sslx_mae.plugin)):
        return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def test_the_command_line_refuses_a_convnet_and_a_bad_ratio_with_exit_2(tmp_path: Path) -> None:
    common = ("pretrain", "--task", "mae", "--steps", "1", "--batch-size", "2", "--no-probe")
    result = invoke(*common, "--out", tmp_path / "conv")
    assert result.exit_code == 2 and "needs a vision transformer" in result.output
    result = invoke(*common, "--backbone", VIT, "--set", "mae.mask_ratio=1", "--out", tmp_path / "ratio")
    assert result.exit_code == 2 and "strictly between 0 and 1" in result.output


def test_mae_trains_with_adamw_unless_told_otherwise(tmp_path: Path) -> None:
    common = ("pretrain", "--task", "mae", "--backbone", VIT, "--steps", "1", "--batch-size", "2", "--no-probe")
    assert invoke(*common, "--out", tmp_path / "default").exit_code == 0
    assert invoke(*common, "--optimizer", "sgd", "--out", tmp_path / "sgd").exit_code == 0
    for run, optimizer, lr in (("default", "adamw", 1e-3), ("sgd", "sgd", 0.05)):
        config = tomllib.loads((tmp_path / run / "config.toml").read_text())
        assert config["optimizer"] == optimizer
        lrs = [json.loads(line)["lr"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert lrs and max(lrs) <= lr and lrs[-1] > 0  # the optimiser's own rate, under warm-up and cosine
    listed = invoke("plugins", "mae")
    assert "trains with adamw unless --optimizer says otherwise" in listed.output


@pytest.mark.slow
def test_pretrain_then_show_draws_original_masked_and_reconstruction(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = invoke("pretrain", "--task", "mae", "--backbone", VIT, "--steps", "2", "--batch-size", "4",
                     "--no-probe", "--out", run)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    shown = invoke("show", run, "--count", "2", "--out", tmp_path / "after.png")
    assert shown.exit_code == 0, shown.output
    fresh = invoke("show", "--task", "mae", "--backbone", VIT, "--count", "2", "--out", tmp_path / "before.png")
    assert fresh.exit_code == 0, fresh.output
    after, before = Image.open(tmp_path / "after.png"), Image.open(tmp_path / "before.png")

    def third_column_ink(picture: Image.Image) -> int:
        """Non-white pixels in the third column's band (original | masked | reconstruction): two 64 px pictures
        once there is a model, only title and caption text before (the sheet is as wide either way)."""
        band = np.asarray(picture.convert("L").crop((140, 0, 204, picture.height)))
        return int((band < 250).sum())

    assert third_column_ink(after) > third_column_ink(before) + 2 * 32 * 32  # the reconstructions appear
    from ssl_engine.run import load_run

    loaded = load_run(run)
    images = torch.rand(2, 3, 32, 32)
    backbone = loaded.model.backbone
    assert isinstance(backbone, TokenBackbone)
    with torch.no_grad():  # the representation: the encoder on all the patches, its class token
        features = loaded.model.representation()(images)
        assert torch.allclose(features, backbone.model.forward_features(normalize(images))[:, 0], atol=1e-6)
