"""Reading back a backbone written by ``sslx export``, with no task plugin installed.

The export's header says how it was written (:mod:`ssl_engine.export`): ``layout = torchvision`` (a ResNet in
torchvision's key names, ``architecture`` and ``small_stem`` given), ``layout = timm`` (a timm model in timm's key
names, the ``backbone`` name and ``image_size`` given) or ``layout = sslx`` (the representation
module's ``state_dict``, with the run's config). Either way the backbone is rebuilt from the core's registry of
backbones (torchvision ResNets, the small convnet, any a plugin adds) and loaded strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ssl_engine.backbones.base import Backbone
from ssl_engine.checkpoint import CheckpointError
from ssl_engine.config import ConfigError, PretrainConfig
from ssl_engine.registry import Registry, UnknownNameError

EXPORT_FORMAT = "sslx.export"
# torchvision's ResNet names -> the core's ResNetBackbone names (the inverse of export.torchvision_key).
TORCHVISION_PREFIXES = {"conv1.": "stem.0.", "bn1.": "stem.1.", **{f"layer{i + 1}.": f"stages.{i}." for i in range(4)}}
# The image size that selects the ResNet stem an export was trained with (small stem at <= 64 px).
SMALL_STEM_SIZE, LARGE_STEM_SIZE = 32, 224


def from_torchvision_key(key: str) -> str:
    """``conv1.weight`` -> ``stem.0.weight``, ``layer3.0.conv1.weight`` -> ``stages.2.0.conv1.weight``."""
    for prefix, replacement in TORCHVISION_PREFIXES.items():
        if key.startswith(prefix):
            return replacement + key[len(prefix) :]
    raise KeyError(key)


def read_export(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on ``map_location``) and header metadata of an export.

    Raises:
        CheckpointError: the file can't be read or is not an ``sslx export`` file.
    """
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:
        raise CheckpointError(f"cannot read exported backbone {path}: {error}") from None
    if metadata.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{path} is not a file written by `sslx export` (format {metadata.get('format')!r}); "
            "pass a run directory or an exported file"
        )
    return tensors, metadata


def load_exported_backbone(path: Path, registry: Registry, map_location: str | torch.device = "cpu") -> Backbone:
    """The backbone in an ``sslx export`` file, rebuilt from the registry's backbones and loaded strictly.

    Raises:
        CheckpointError: not an export, an unknown architecture, or weights that don't fit it (the message says
            which and what to do).
    """
    tensors, metadata = read_export(path, map_location)
    layout = metadata.get("layout")
    if layout == "torchvision":
        name = metadata.get("architecture", "")
        size = SMALL_STEM_SIZE if json.loads(metadata.get("small_stem", "false")) else LARGE_STEM_SIZE
        state = {from_torchvision_key(key): value for key, value in tensors.items() if not key.startswith("fc.")}
    elif layout == "timm":
        name, size = metadata.get("backbone", ""), int(metadata.get("image_size", "32"))
        state = {f"model.{key}": value for key, value in tensors.items()}
    elif layout == "sslx":
        try:
            config = PretrainConfig.from_dict(json.loads(metadata["config"]), str(path))
        except (KeyError, ValueError, ConfigError) as error:
            raise CheckpointError(f"{path}: the export's config can't be read ({error})") from None
        name, size = config.backbone, int(metadata.get("image_size", "32"))
        if any(not key.startswith("backbone.") for key in tensors):
            raise CheckpointError(
                f"{path} holds a representation of more than one network ({metadata.get('architecture')}), not a "
                "single backbone; use ssl_engine.load_representation(RUN_DIR) with its task plugin installed"
            )
        state = {key[len("backbone.") :]: value for key, value in tensors.items()}
    else:
        raise CheckpointError(f"{path}: unknown export layout {layout!r}")
    try:
        backbone: Backbone = registry.get("backbone", name).obj(3, size)
    except UnknownNameError as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        backbone.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights don't fit backbone {name!r}: {error}") from None
    return backbone.to(map_location).eval()
