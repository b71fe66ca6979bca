"""Exporting a run's representation for use outside sslx.

A ResNet backbone is written in the key layout of the torchvision model it came from, so
``torchvision.models.resnet18().load_state_dict(weights, strict=False)`` loads everything but the classifier
(``fc``). timm's ResNets share that layout: ``timm.create_model("resnet18", num_classes=0)`` (no classifier) loads
it strictly. With the small-image stem (inputs of 64 px and under) either model needs two changes first::

    model = torchvision.models.resnet18()       # or timm.create_model("resnet18", num_classes=0)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()

A timm backbone (``--backbone timm:NAME``) is written in timm's own key layout, and loads strictly into the timm
model made with the same sizes, e.g. for ``timm:vit_tiny_patch16_224`` trained at 32 px (patch 4)::

    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4)
    model.load_state_dict(safetensors.torch.load_file("backbone.safetensors"))    # strict: every key matches

``model(images)`` is then the run's representation (the class token for a ViT). The export prints the exact
``timm.create_model`` call (with every option the run gave the model) and keeps it in the header.

Any other representation (the small convnet, split-brain's pair of networks) is exported in sslx's own layout
(the representation module's ``state_dict``), with a message saying so. Inputs are RGB in [0, 1] normalised with
ImageNet's mean and std (``ssl_engine.images.normalize``) unless the metadata's ``input`` says otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from ssl_engine.atomic_files import with_user_permissions, write_bytes_atomic
from ssl_engine.backbones.resnet import ResNetBackbone
from ssl_engine.backbones.timm_backbone import TimmBackbone, create_model_call, rebuild_options, timm_state_dict
from ssl_engine.images import normalize
from ssl_engine.registry import Registry
from ssl_engine.run import load_run

SMALL_STEM_LINES = (
    "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
    "model.maxpool = torch.nn.Identity()",
)


@dataclass
class ExportReport:
    """What was written and how to use it."""

    path: Path
    layout: str  # "torchvision", "timm" or "sslx"
    architecture: str
    message: str


def torchvision_key(key: str) -> str:
    """``stem.0.weight`` -> ``conv1.weight``, ``stem.1.*`` -> ``bn1.*``, ``stages.2.*`` -> ``layer3.*``."""
    head, _, rest = key.partition(".")
    index, _, tail = rest.partition(".")
    if head == "stem":
        return {"0": "conv1", "1": "bn1"}[index] + "." + tail
    if head == "stages":
        return f"layer{int(index) + 1}.{tail}"
    raise KeyError(key)


def write_safetensors(out: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``state`` to ``out`` as safetensors, atomically (an earlier file at ``out`` stays whole if writing
    fails) and with the user's permissions. Raises ``OSError`` (a read-only directory, a full disk)."""
    write_bytes_atomic(out, save(state, metadata=metadata))
    with_user_permissions(out)


def export_representation(run_dir: Path, out: Path, registry: Registry, task: str | None = None) -> ExportReport:
    """Write the representation of ``task`` (default: the run's first) to ``out`` as safetensors."""
    run = load_run(run_dir, registry)
    representation = run.model.representation(task)
    task_name = task or run.config.tasks[0].name
    backbone = getattr(representation, "backbone", None)
    standard_input = getattr(representation, "prepare", None) is normalize
    metadata = {
        "format": "sslx.export",
        "run": str(run_dir),
        "task": task_name,
        "step": str(run.step),
        "image_size": str(run.image_size),
        "input": "rgb normalised with ImageNet mean/std" if standard_input else f"prepared by task {task_name!r}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(backbone, ResNetBackbone) and type(representation).__name__ == "Representation":
        state = {torchvision_key(k): v.contiguous() for k, v in backbone.state_dict().items()}
        metadata |= {"layout": "torchvision", "architecture": backbone.architecture,
                     "small_stem": json.dumps(backbone.small_stem)}  # fmt: skip
        write_safetensors(out, state, metadata)
        stem = list(SMALL_STEM_LINES) if backbone.small_stem else []
        load = f"safetensors.torch.load_file({str(out)!r})"
        torchvision_lines = [
            f"model = torchvision.models.{backbone.architecture}()",
            *stem,
            f"model.load_state_dict({load}, strict=False)  # all but fc",
        ]
        timm_lines = [
            f"model = timm.create_model({backbone.architecture!r}, num_classes=0)",
            *stem,
            f"model.load_state_dict({load})  # strict: timm's ResNets share torchvision's layout",
        ]
        note = (
            "" if standard_input else f"\nNote: task {task_name!r} feeds the network a prepared input, not plain RGB."
        )
        message = (
            "exported in torchvision's layout; load it with:\n  "
            + "\n  ".join(torchvision_lines)
            + "\nor into timm's model:\n  "
            + "\n  ".join(timm_lines)
            + note
        )
        return ExportReport(out, "torchvision", backbone.architecture, message)
    if isinstance(backbone, TimmBackbone) and type(representation).__name__ == "Representation":
        return export_timm(backbone, out, metadata, standard_input)
    state = {k: v.contiguous() for k, v in representation.state_dict().items()}
    architecture = type(backbone).__name__ if backbone is not None else type(representation).__name__
    metadata |= {"layout": "sslx", "architecture": architecture, "config": run.config.to_json()}
    write_safetensors(out, state, metadata)
    message = (
        f"the representation of task {task_name!r} ({architecture}) is not a torchvision model, so it was exported "
        f"in sslx's own layout (the Representation module's state_dict); load it with "
        f"ssl_engine.load_representation({str(run_dir)!r}) or rebuild the module and load_state_dict"
    )
    return ExportReport(out, "sslx", architecture, message)


def export_timm(backbone: TimmBackbone, out: Path, metadata: dict[str, str], standard_input: bool) -> ExportReport:
    """Write a timm backbone in timm's own key layout, with the ``timm.create_model`` call that loads it."""
    options = rebuild_options(backbone.timm_options)
    call = create_model_call(backbone.architecture, options)
    metadata |= {"layout": "timm", "architecture": backbone.architecture, "backbone": backbone.spec.name,
                 "timm_options": json.dumps(options), "create_model": call}  # fmt: skip
    write_safetensors(out, timm_state_dict(backbone), metadata)
    lines = [f"model = {call}", f"model.load_state_dict(safetensors.torch.load_file({str(out)!r}))  # strict"]
    prepared = f"\nNote: task {metadata['task']!r} feeds the network a prepared input, not plain RGB."
    note = "" if standard_input else prepared
    message = "exported in timm's layout; load it with:\n  " + "\n  ".join(lines) + note
    return ExportReport(out, "timm", backbone.architecture, message)
