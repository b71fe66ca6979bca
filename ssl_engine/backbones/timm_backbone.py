"""timm models as backbones: ``--backbone timm:NAME`` (an optional extra, ``pip install 'sslx[timm]'``).

Any model of ``timm.list_models()`` is built with random weights, never downloaded (``pretrained=False``; a local
file of weights can be given with ``?weights=PATH``), without its classifier (``num_classes=0``):

- **Convolutional models** (``timm:resnet18``, ``timm:convnext_atto``, ...) give their final feature map
  ``(B, D, H/s, W/s)`` (``forward_features``), with their own stem: unlike the core's ResNets they get no
  small-image stem, so at 32 px most reach a 1x1 map (``s = 32``). ``pooled`` is the map's mean.
- **Vision transformers** (``timm:vit_tiny_patch16_224``, DeiT, EVA, ...) give their final patch tokens reshaped to
  the patch grid ``(B, D, H/p, W/p)`` (the class token left out), so decoder heads work on them as on a
  convolutional map; ``stride`` is the patch size ``p``. ``pooled`` is what timm's own pooled output is for the
  model (``forward_head(..., pre_logits=True)``, i.e. ``timm.create_model(NAME, num_classes=0)(images)``): the
  final class token for the ViTs and DeiTs (``global_pool='token'``), the mean patch token for models pooled by
  ``avg``. The class token is the paper's choice (Dosovitskiy et al. 2021) and the one MAE's linear probe uses
  (He et al. 2022); pass ``?global_pool=avg`` for the token mean.

**Small images get small patches**, as the ResNets get a small stem: at ``--image-size`` 64 px and under a ViT's
patch is the power of 2 at or just below ``image_size / 8`` (a grid of at least 8x8 tokens: patch 4 at 32 px, 8 at
64 px, 4 at 48 px, 2 at 16 px; a power of 2 so that decoder heads, which upsample by doubling, fit it); above, the
model's own (16 for ``vit_*_patch16_*``). The position embedding is made for the training image size
(``img_size=image_size``), and inputs of other sizes (jigsaw's tiles, multi-crop's local views) are padded to whole
patches and get the position embedding interpolated (timm's ``dynamic_img_size`` and ``dynamic_img_pad``).
Override the patch with ``timm:NAME?patch_size=8``; any other keyword of the timm model goes the same way
(``?depth=6&drop_path_rate=0.1``, values parsed as int, float, ``true``/``false`` or text). An image size that is
not a multiple of the patch is refused before training, as are an unknown name (with the closest names) and a
missing timm (with the command that installs it).

Plain ViTs (``timm.models.vision_transformer.VisionTransformer``) also provide the token interface of
:class:`~ssl_engine.backbones.tokens.TokenBackbone` that masked image modelling needs. On CUDA timm's attention
runs fused ``scaled_dot_product_attention`` (its default) under the run's autocast (``--precision``), as the
ResNets do.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ssl_engine.backbones.base import Backbone
from ssl_engine.backbones.tokens import TokenBackbone
from ssl_engine.registry import UnknownNameError
from ssl_engine.settings import SettingError
from ssl_engine.task import ImageSizeError

PREFIX = "timm"
FAMILY_NAME = f"{PREFIX}:NAME"
"""The registry name of the family: ``--backbone timm:NAME`` stands for any timm model."""
INSTALL_HINT = "pip install 'sslx[timm]'"
SMALL_IMAGE_MAX = 64
SMALL_IMAGE_GRID = 8
# Set by sslx for every timm model; a user option naming one of these is refused.
RESERVED_OPTIONS = ("pretrained", "num_classes", "in_chans", "pretrained_cfg", "pretrained_cfg_overlay")


class TimmNotInstalledError(UnknownNameError):
    """``--backbone timm:NAME`` without timm installed; the message gives the command that installs it."""

    def __init__(self, name: str) -> None:
        super().__init__("backbone", name, [])
        self.args = (f"backbone {name!r} needs timm, which is not installed; install it with: {INSTALL_HINT}",)


class UnknownTimmModelError(UnknownNameError):
    """A ``timm:NAME`` whose ``NAME`` timm does not know; the message lists the closest names."""

    def __init__(self, name: str, model: str, close: list[str]) -> None:
        super().__init__("backbone", name, close)
        if not model:
            hint = "name a timm model after 'timm:', e.g. timm:vit_tiny_patch16_224 or timm:resnet18"
        elif close:
            hint = "did you mean " + ", ".join(f"timm:{candidate}" for candidate in close) + "?"
        else:
            hint = "see timm.list_models() for the names"
        self.args = (f"timm has no model {model!r} (backbone {name!r}); {hint}",)


class TimmOptionError(SettingError):
    """An option of ``timm:NAME?KEY=VALUE`` the model does not take, or that sslx sets itself."""


class PatchSizeError(ImageSizeError, SettingError):
    """The image size is not a whole number of patches. An :class:`ImageSizeError` for users (exit 2) and a
    :class:`SettingError` for the model builder, which passes it on as the user's error, not a plugin's."""


def import_timm(name: str = FAMILY_NAME) -> ModuleType:
    """The ``timm`` module (imported on first use: it is an optional extra).

    Raises:
        TimmNotInstalledError: timm is not installed (the message says how to install it).
    """
    try:
        import timm
    except ImportError:
        raise TimmNotInstalledError(name) from None
    return timm


def parse_value(text: str) -> Any:
    """``"8"`` -> 8, ``"0.1"`` -> 0.1, ``"true"`` -> True, anything else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


@dataclass(frozen=True)
class TimmSpec:
    """A parsed ``timm:NAME?KEY=VALUE&KEY=VALUE`` backbone name.

    Attributes:
        name: the whole backbone name, as given (kept in configs and checkpoints).
        model: timm's model name.
        options: keyword arguments for ``timm.create_model`` (``patch_size`` among them, if given), and
            ``weights``, a local file of weights.
    """

    name: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, name: str) -> TimmSpec:
        """Parse ``name`` (``timm:`` may be left out).

        Raises:
            TimmOptionError: an option is not ``KEY=VALUE`` or is one sslx sets itself.
        """
        rest = name[len(PREFIX) + 1 :] if name.startswith(PREFIX + ":") else name
        model, _, query = rest.partition("?")
        options: dict[str, Any] = {}
        for pair in query.replace(",", "&").split("&") if query else []:
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key.isidentifier():
                raise TimmOptionError(f"backbone {name!r}: option {pair!r} is not KEY=VALUE (timm:NAME?patch_size=8)")
            if key in RESERVED_OPTIONS:
                raise TimmOptionError(f"backbone {name!r}: option {key!r} is set by sslx and can't be given")
            options[key] = parse_value(value)
        return cls(name, model.strip(), tuple(options.items()))

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def model_options(self) -> dict[str, Any]:
        """The options that are keywords of the timm model (all but ``weights``)."""
        return {key: value for key, value in self.options if key != "weights"}


def check_model(spec: TimmSpec) -> None:
    """Raise unless timm is installed and knows ``spec.model`` (suggesting the closest names otherwise)."""
    timm = import_timm(spec.name)
    if spec.model and timm.is_model(spec.model):
        return
    close = difflib.get_close_matches(spec.model, timm.list_models(), n=5, cutoff=0.6) if spec.model else []
    raise UnknownTimmModelError(spec.name, spec.model, close)


def has_token_grid(model: nn.Module) -> bool:
    """A transformer over patch tokens (ViT, DeiT, EVA, BEiT, ...): a patch embedding and prefix tokens."""
    return hasattr(model, "num_prefix_tokens") and hasattr(getattr(model, "patch_embed", None), "patch_size")


def has_token_interface(model: nn.Module) -> bool:
    """A plain timm ``VisionTransformer``, whose embedding steps :class:`TimmViT` can run on a subset of tokens
    (subclasses that change them, such as DeiT's distilled models, are used through the feature map only)."""
    from timm.models.vision_transformer import VisionTransformer

    kind: Any = type(model)
    return (
        isinstance(model, VisionTransformer)
        and kind.forward_features is VisionTransformer.forward_features
        and kind._pos_embed is VisionTransformer._pos_embed
    )


def patch_size_for(spec: TimmSpec, image_size: int, model_patch: int) -> int:
    """``?patch_size=`` if given; else at 64 px and under the power of 2 at or below ``image_size / 8``; else the
    model's own."""
    given = spec.option("patch_size")
    if given is not None:
        if not isinstance(given, int) or isinstance(given, bool) or given < 1:
            raise TimmOptionError(f"backbone {spec.name!r}: patch_size must be a whole number >= 1, got {given!r}")
        return given
    if image_size <= SMALL_IMAGE_MAX:
        return 1 << max(0, (image_size // SMALL_IMAGE_GRID).bit_length() - 1)
    return model_patch


def accepted_keywords(model_class: type) -> set[str] | None:
    """The keywords ``model_class.__init__`` names (``None`` if it takes ``**kwargs``: anything goes)."""
    parameters = inspect.signature(model_class).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return {parameter.name for parameter in parameters}


def create_options(spec: TimmSpec, in_channels: int, image_size: int) -> dict[str, Any]:
    """The keyword arguments of ``timm.create_model`` for ``spec`` at ``image_size`` (``pretrained`` aside).

    A meta-device copy of the model (no memory, no random numbers drawn) tells a token model from a
    convolutional one; token models get ``img_size``, the patch size and dynamic sizes.

    Raises:
        PatchSizeError: ``image_size`` is not a multiple of the patch size.
        TimmOptionError: an option the model does not take.
    """
    timm = import_timm(spec.name)
    options = {"num_classes": 0, "in_chans": in_channels, **spec.model_options()}
    with torch.device("meta"):
        probe: Any = call_timm(timm, spec, pretrained=False, **options)
    if not has_token_grid(probe):
        return options
    model_patch = int(probe.patch_embed.patch_size[0])
    patch = patch_size_for(spec, image_size, model_patch)
    if image_size % patch:
        lower, upper = image_size - image_size % patch, image_size + patch - image_size % patch
        raise PatchSizeError(
            f"image size {image_size} px is not a whole number of {patch} px patches (backbone {spec.name!r}); "
            f"use --image-size {lower or upper} or {upper}, or another patch with timm:{spec.model}?patch_size=P"
        )
    sized: dict[str, Any] = {"img_size": image_size, "patch_size": patch}
    keywords = accepted_keywords(type(probe))
    for dynamic in ("dynamic_img_size", "dynamic_img_pad"):
        if keywords is None or dynamic in keywords:
            sized[dynamic] = True
    return sized | options


def call_timm(timm: ModuleType, spec: TimmSpec, **options: Any) -> nn.Module:
    """``timm.create_model(spec.model, **options)``, a keyword the model does not take refused as the user's."""
    try:
        model: nn.Module = timm.create_model(spec.model, **options)
    except TypeError as error:
        if "unexpected keyword" not in str(error) and "got an unexpected" not in str(error):
            raise
        message = f"backbone {spec.name!r}: timm's {spec.model} does not take an option given: {error}"
        raise TimmOptionError(message) from None
    return model


def create_model(spec: TimmSpec, in_channels: int, image_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model for ``spec`` with random weights (or ``?weights=PATH``), and the keywords it was made with
    (what ``timm.create_model`` needs to rebuild it, ``pretrained`` aside)."""
    timm = import_timm(spec.name)
    options = create_options(spec, in_channels, image_size)
    weights = spec.option("weights")
    if weights is None:
        return call_timm(timm, spec, pretrained=False, **options), options
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise TimmOptionError(f"backbone {spec.name!r}: weights file {str(path)!r} does not exist")
    # timm reads the local file (never the network) and adapts the patch and position embeddings to the sizes.
    overlay = {"file": str(path), "url": "", "hf_hub_id": ""}
    model = call_timm(timm, spec, pretrained=True, pretrained_cfg_overlay=overlay, **options)
    return model, options


class TimmBackbone(Backbone):
    """A timm model without its classifier: ``(B, C, H, W)`` -> feature map ``(B, D, h, w)``.

    Convolutional models give their final map; token models (ViTs) their final patch tokens on the patch grid
    (see the module's notes). ``pooled`` is the map's mean for convolutional models and timm's own pooled output
    for token models.

    Args:
        model: the timm model, from :func:`create_model`.
        spec: the parsed ``timm:NAME?...``.
        options: the keywords it was made with.
        in_channels: input channels.

    Attributes:
        model: the timm model (its ``state_dict`` is in timm's own key layout).
        architecture: timm's model name.
        timm_options: the keywords of ``timm.create_model`` that rebuild it (with ``num_classes=0``).
    """

    model: Any  # the timm model: its attributes (patch_embed, blocks, ...) are timm's, not typed here

    def __init__(self, model: nn.Module, spec: TimmSpec, options: Mapping[str, Any], in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.timm_options = dict(options)
        self.architecture = spec.model
        self.spec = spec
        self.feature_dim = int(getattr(model, "num_features", 0))
        self.tokens_first = has_token_grid(model)
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        if self.tokens_first:
            self.stride = int(self.model.patch_embed.patch_size[0])
            self.prefix = int(getattr(model, "num_prefix_tokens", 0))
        else:
            self.prefix = 0
            self.stride = self.map_stride(in_channels)

    def map_stride(self, in_channels: int) -> int:
        """The total downsampling of a convolutional model (its ``feature_info``, else measured at 64 px)."""
        info = getattr(self.model, "feature_info", None)
        if isinstance(info, list) and info and "reduction" in info[-1]:
            return int(info[-1]["reduction"])
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            side = self.feature_map(torch.zeros(2, in_channels, 64, 64)).shape[-1]
        self.model.train(training)
        return max(1, round(64 / side))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if features.ndim == 3:  # tokens (B, P + N, D) on a grid of ceil(H/p) x ceil(W/p)
            rows = math.ceil(images.shape[-2] / self.stride)
            columns = math.ceil(images.shape[-1] / self.stride)
            patches = features[:, self.prefix :]  # (B, N, D)
            return patches.transpose(1, 2).reshape(features.shape[0], features.shape[-1], rows, columns)
        if self.channels_last_output:
            return features.permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        if self.tokens_first:
            pooled: torch.Tensor = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
            return pooled
        return self(images).mean(dim=(2, 3))


# The parts of a timm VisionTransformer before its blocks, and its learnt free vectors.
EMBEDDING_PARTS = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")
TOKEN_EMBEDDINGS = ("cls_token", "reg_token", "pos_embed")


class TimmViT(TimmBackbone, TokenBackbone):
    """A timm ``VisionTransformer`` with the token interface of :class:`TokenBackbone` (masked image modelling).

    ``encode_tokens(tokens(images))`` runs exactly the steps of timm's ``forward_features`` (patch embedding,
    position embedding, class and register tokens, the blocks, the final norm); with ``keep`` only the kept patch
    tokens enter the blocks, so the encoder's cost falls with the share of tokens masked.
    """

    def __init__(self, model: nn.Module, spec: TimmSpec, options: Mapping[str, Any], in_channels: int) -> None:
        super().__init__(model, spec, options, in_channels)
        self.patch_size = self.stride
        self.num_prefix_tokens = self.prefix

    def positions(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The position embeddings of the patch tokens on ``grid`` ``(1, N, D)`` (interpolated from the trained
        grid when it differs) and of the prefix tokens ``(1, P, D)`` (``None`` where the model has none)."""
        from timm.layers import resample_abs_pos_embed

        model = self.model
        if model.pos_embed is None:
            return None, None
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        trained = tuple(model.patch_embed.grid_size)
        positions = model.pos_embed
        if tuple(grid) != trained:
            positions = resample_abs_pos_embed(positions, new_size=list(grid), old_size=list(trained),
                                               num_prefix_tokens=prefix)  # fmt: skip
        return positions[:, prefix:], (positions[:, :prefix] if prefix else None)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        embedded = self.model.patch_embed(images)  # (B, h, w, D) with dynamic sizes, else (B, N, D)
        if embedded.ndim == 4:
            grid = (embedded.shape[1], embedded.shape[2])
            embedded = embedded.flatten(1, 2)
        else:
            grid = tuple(self.model.patch_embed.grid_size)
        patch_positions, _ = self.positions(grid)
        return embedded if patch_positions is None else embedded + patch_positions

    def encode_tokens(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        if keep is not None:
            tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
        prefix = [
            token.expand(tokens.shape[0], -1, -1) for token in (model.cls_token, model.reg_token) if token is not None
        ]
        if prefix:
            prefix_tokens = torch.cat(prefix, dim=1)  # (B, P, D)
            if model.pos_embed is not None and not model.no_embed_class:
                prefix_tokens = prefix_tokens + model.pos_embed[:, : model.num_prefix_tokens]
            tokens = torch.cat([prefix_tokens, tokens], dim=1)
        sequence = model.norm_pre(model.patch_drop(model.pos_drop(tokens)))
        encoded: torch.Tensor = model.norm(model.blocks(sequence))
        return encoded

    def pool_tokens(self, encoded: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.model.forward_head(encoded, pre_logits=True)
        return pooled

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return TimmBackbone.pooled(self, images)

    def parameter_depths(self) -> dict[str, int]:
        blocks = len(self.model.blocks)
        depths = {}
        for name, _ in self.named_parameters():
            part = name.removeprefix("model.").split(".")
            if part[0] in EMBEDDING_PARTS:
                depths[name] = 0
            elif part[0] == "blocks":
                depths[name] = int(part[1]) + 1
            else:  # the final norm, and any pooling or head after the blocks
                depths[name] = blocks + 1
        return depths

    def token_embedding_names(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.removeprefix("model.") in TOKEN_EMBEDDINGS}


def build_timm_backbone(spec: TimmSpec, in_channels: int, image_size: int) -> TimmBackbone:
    """The backbone of ``spec``: a :class:`TimmViT` for plain ViTs, else a :class:`TimmBackbone`."""
    model, options = create_model(spec, in_channels, image_size)
    kind = TimmViT if has_token_interface(model) else TimmBackbone
    return kind(model, spec, options, in_channels)


class TimmFamily:
    """The registry entry ``timm:NAME``: resolves ``timm:vit_tiny_patch16_224`` (and options) to a backbone factory.

    The registry looks a name ``PREFIX:REST`` up here when no entry has that exact name
    (:meth:`ssl_engine.registry.Table.__getitem__`); ``timm:NAME`` itself is only a placeholder for listings.
    """

    def resolve(self, member: str) -> TimmFactory:
        """The factory of ``timm:MEMBER``.

        Raises:
            TimmNotInstalledError, UnknownTimmModelError, TimmOptionError: the user's mistake, said so.
        """
        spec = TimmSpec.parse(f"{PREFIX}:{member}")
        check_model(spec)
        return TimmFactory(spec)

    def __call__(self, in_channels: int, image_size: int) -> Backbone:
        raise UnknownTimmModelError(FAMILY_NAME, "", [])


@dataclass(frozen=True)
class TimmFactory:
    """``factory(in_channels, image_size) -> TimmBackbone`` for one parsed ``timm:NAME?...``."""

    spec: TimmSpec

    def __call__(self, in_channels: int, image_size: int) -> TimmBackbone:
        return build_timm_backbone(self.spec, in_channels, image_size)


def timm_state_dict(backbone: TimmBackbone) -> dict[str, torch.Tensor]:
    """The backbone's weights in timm's own key layout (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``)."""
    return {key: value.contiguous() for key, value in backbone.model.state_dict().items()}


def rebuild_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``timm.create_model`` that rebuild a backbone's model, ``num_classes=0`` first and the
    default ``in_chans=3`` left out."""
    kept = {key: value for key, value in options.items() if key != "num_classes"}
    if kept.get("in_chans") == 3:
        del kept["in_chans"]
    return {"num_classes": 0, **kept}


def create_model_call(architecture: str, options: Mapping[str, Any]) -> str:
    """The Python line that rebuilds the backbone's timm model (``timm.create_model('vit_tiny...', ...)``)."""
    listed = "".join(f", {key}={value!r}" for key, value in options.items())
    return f"timm.create_model({architecture!r}{listed})"
