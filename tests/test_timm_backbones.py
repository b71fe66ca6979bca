"""timm backbones (``--backbone timm:NAME``): ViTs as a patch-token grid with small patches for small images,
convolutional models as their feature map, the token interface, no download, the user's errors (exit 2), and the
export in timm's own key layout that ``timm.create_model`` loads strictly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ssl_engine import load_representation
from ssl_engine.backbones.timm_backbone import (
    FAMILY_NAME,
    PatchSizeError,
    TimmBackbone,
    TimmNotInstalledError,
    TimmOptionError,
    TimmSpec,
    TimmViT,
    UnknownTimmModelError,
)
from ssl_engine.backbones.tokens import TokenBackbone, patchify, unpatchify
from ssl_engine.images import normalize
from ssl_engine.plugins import get_host
from ssl_engine.run import load_backbone

timm = pytest.importorskip("timm")

# One block instead of twelve: the same code paths, built and run in a moment on a shared CPU.
VIT = "timm:vit_tiny_patch16_224?depth=1"


def build(name: str, image_size: int = 32) -> TimmBackbone:
    backbone = get_host().registry.backbones[name].obj(3, image_size)
    assert isinstance(backbone, TimmBackbone)
    return backbone


def test_the_timm_family_is_registered_and_resolves_any_timm_name() -> None:
    backbones = get_host().registry.backbones
    assert FAMILY_NAME in backbones.names()
    entry = backbones["timm:vit_tiny_patch16_224"]
    assert (entry.name, entry.plugin, entry.distribution) == ("timm:vit_tiny_patch16_224", "core", "sslx")
    assert "timm:resnet18" in backbones and "timm:no_such_model" not in backbones and "timm" not in backbones


def test_sslx_plugins_lists_the_timm_entry(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke("plugins")
    assert result.exit_code == 0 and "timm:NAME" in result.output


def test_a_vit_gives_its_patch_tokens_on_the_grid_and_pools_the_class_token() -> None:
    torch.manual_seed(0)
    backbone = build(VIT).eval()
    assert isinstance(backbone, TimmViT) and isinstance(backbone, TokenBackbone)
    assert (backbone.feature_dim, backbone.stride, backbone.patch_size, backbone.num_prefix_tokens) == (192, 4, 4, 1)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = backbone.model.forward_features(images)  # (2, 1 + 64, 192), final norm applied
        grid = backbone(images)
        assert grid.shape == (2, 192, 8, 8)
        # Row-major: token 1 + 8 r + c is the grid's (r, c); the class token is left out of the map.
        assert torch.equal(grid[:, :, 2, 5], tokens[:, 1 + 8 * 2 + 5])
        pooled = backbone.pooled(images)
        assert torch.equal(pooled, tokens[:, 0])  # the class token (global_pool='token')
        assert torch.allclose(pooled, backbone.model(images))  # timm's own num_classes=0 output


@pytest.mark.parametrize(
    ("name", "image_size", "patch"),
    [(VIT, 32, 4), (VIT, 64, 8), (VIT, 48, 4), (VIT, 16, 2), (VIT, 96, 16), (VIT + "&patch_size=8", 32, 8)],
)
def test_small_images_get_small_patches_and_the_patch_can_be_set(name: str, image_size: int, patch: int) -> None:
    backbone = build(name, image_size)
    assert backbone.stride == patch and backbone.timm_options["img_size"] == image_size
    assert backbone(torch.randn(1, 3, image_size, image_size)).shape[-2:] == (image_size // patch,) * 2


def test_inputs_of_other_sizes_are_padded_to_whole_patches() -> None:
    backbone = build(VIT).eval()  # patch 4, trained grid 8 x 8
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 9, 9)).shape == (2, 192, 3, 3)  # jigsaw's tiles, multi-crop's views
        assert backbone.pooled(torch.randn(2, 3, 48, 48)).shape == (2, 192)


def test_the_token_interface_is_the_forward_pass_and_encodes_a_subset() -> None:
    torch.manual_seed(0)
    backbone = build(VIT).eval()
    assert isinstance(backbone, TimmViT)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = backbone.tokens(images)
        assert tokens.shape == (3, 64, 192)
        assert torch.equal(backbone.encode_tokens(tokens), backbone.model.forward_features(images))
        keep = torch.stack([torch.randperm(64)[:16] for _ in range(3)])  # (3, 16)
        encoded = backbone.encode_tokens(tokens, keep)
        assert encoded.shape == (3, 1 + 16, 192)
        # Encoding the kept tokens alone is encoding a sequence made of them.
        alone = backbone.encode_tokens(torch.stack([tokens[i, keep[i]] for i in range(3)]))
        assert torch.allclose(encoded, alone, atol=1e-6)
        assert backbone.pool_tokens(encoded).shape == (3, 192)


def test_patchify_and_unpatchify_are_inverse_and_row_major() -> None:
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)  # (2, 2 * 3, 4 * 4 * 3)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[1, 4].reshape(4, 4, 3).permute(2, 0, 1), images[1, :, 4:8, 4:8])
    assert torch.equal(unpatchify(patches, 4, (2, 3)), images)
    with pytest.raises(ValueError, match="whole number"):
        patchify(torch.randn(1, 3, 10, 10), 4)


def test_a_convolutional_timm_model_gives_its_feature_map() -> None:
    backbone = build("timm:resnet18", 32)
    assert not isinstance(backbone, TokenBackbone)
    assert (backbone.feature_dim, backbone.stride) == (512, 32)
    images = torch.randn(2, 3, 64, 64)
    assert backbone(images).shape == (2, 512, 2, 2)
    assert backbone.pooled(images).shape == (2, 512)


def test_nothing_is_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a timm backbone tried to load pretrained weights")

    monkeypatch.setattr(builder, "load_pretrained", no_network)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_network, raising=False)
    build(VIT)
    build("timm:resnet18")


def test_weights_come_from_a_local_file_only_when_given(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0, img_size=32, patch_size=4)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build(f"{VIT}&weights={path}")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    with pytest.raises(TimmOptionError, match="does not exist"):
        build(f"{VIT}&weights={tmp_path / 'missing.pth'}")


def test_names_and_options_are_parsed() -> None:
    spec = TimmSpec.parse("timm:vit_small_patch16_224?patch_size=8&drop_path_rate=0.1&class_token=false&act=gelu")
    assert spec.model == "vit_small_patch16_224"
    assert dict(spec.options) == {"patch_size": 8, "drop_path_rate": 0.1, "class_token": False, "act": "gelu"}
    with pytest.raises(TimmOptionError, match="set by sslx"):
        TimmSpec.parse("timm:resnet18?pretrained=true")
    with pytest.raises(TimmOptionError, match="KEY=VALUE"):
        TimmSpec.parse("timm:resnet18?oops")


# --- the user's errors: exit 2 with what to do ---------------------------------------------------------------------
def pretrain(invoke, tmp_path: Path, backbone: str, *more: str):  # type: ignore[no-untyped-def]
    return invoke("pretrain", "--task", "rotation", "--backbone", backbone, "--steps", "1", "--batch-size", "2",
                  "--no-probe", "--out", tmp_path / "run", *more)  # fmt: skip


def test_an_unknown_timm_name_suggests_close_ones(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = pretrain(invoke, tmp_path, "timm:vit_tiny_patch16")
    assert result.exit_code == 2
    assert "timm has no model 'vit_tiny_patch16'" in result.output
    assert "did you mean" in result.output and "timm:vit_tiny_patch16_224" in result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(UnknownTimmModelError, match="name a timm model"):
        get_host().registry.backbones[FAMILY_NAME].obj(3, 32)


def test_an_image_size_that_is_not_whole_patches_is_refused(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = pretrain(invoke, tmp_path, VIT + "&patch_size=8", "--image-size", "36")
    assert result.exit_code == 2
    assert "image size 36 px is not a whole number of 8 px patches" in result.output
    assert "--image-size 32 or 40" in result.output
    with pytest.raises(PatchSizeError):
        build("timm:vit_tiny_patch16_224", 100)  # the model's own patch 16 above 64 px


def test_an_option_the_model_does_not_take_is_refused(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = pretrain(invoke, tmp_path, "timm:resnet18?no_such_option=1")
    assert result.exit_code == 2 and "does not take an option" in result.output


def test_a_missing_timm_says_how_to_install_it(invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    result = pretrain(invoke, tmp_path, "timm:vit_tiny_patch16_224")
    assert result.exit_code == 2
    assert "needs timm, which is not installed" in result.output and "pip install 'sslx[timm]'" in result.output
    with pytest.raises(TimmNotInstalledError):
        get_host().registry.backbones["timm:resnet18"]


# --- export in timm's own layout -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_timm_export_loads_strictly_into_timm_create_model(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, out = tmp_path / "run", tmp_path / "vit.safetensors"
    trained = pretrain(invoke, tmp_path, VIT)
    assert trained.exit_code == 0, trained.output
    exported = invoke("export", run, "--out", out)
    assert exported.exit_code == 0, exported.output
    assert "timm's layout" in exported.output
    call = "timm.create_model('vit_tiny_patch16_224', num_classes=0, img_size=32, patch_size=4"
    assert call in exported.output
    with safe_open(str(out), framework="pt") as handle:
        header = handle.metadata()
    assert header["layout"] == "timm" and header["architecture"] == "vit_tiny_patch16_224"
    assert header["create_model"].startswith(call)
    state = load_file(str(out))
    assert "cls_token" in state and "patch_embed.proj.weight" in state  # timm's own key names
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4, depth=1)
    model.load_state_dict(state)  # strict
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        theirs = model.eval()(normalize(images))
        ours = load_representation(run).eval()(images)
        assert torch.allclose(ours, theirs, atol=1e-5)
        # load_backbone reads the export back (timm layout) as the run's backbone
        backbone = load_backbone(out)
        assert isinstance(backbone, TimmViT)
        assert torch.allclose(backbone.pooled(normalize(images)), theirs, atol=1e-5)
        assert torch.allclose(backbone(normalize(images)), load_backbone(run)(normalize(images)), atol=1e-5)


# --- precision and attention ---------------------------------------------------------------------------------------
def test_vit_attention_is_fused_sdpa_and_runs_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the run's autocast (``--precision``, bf16 by default) and timm's fused attention apply to ViTs as to
    the ResNets; the same code paths run here under the CPU's bf16 autocast."""
    backbone = build("timm:vit_tiny_patch16_224?depth=2")
    assert all(block.attn.fused_attn for block in backbone.model.blocks)
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0].dtype)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = backbone(torch.randn(2, 3, 32, 32))
    assert calls == [torch.bfloat16] * 2  # one fused attention per block, in bf16 (the final norm gives float32)
    assert features.shape == (2, 192, 8, 8) and torch.isfinite(features).all()
    features.float().sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())
