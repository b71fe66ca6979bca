"""Every installed task on a vision transformer (``timm:vit_tiny_patch16_224`` at 32 px, patch 4): it builds and
trains one step, or it is refused before training with a reason. README's table of tasks on a ViT comes from
:func:`one_step` (``python tests/test_tasks_on_vit.py`` prints it)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ssl_engine.cli import main as main_command
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.images import to_float
from ssl_engine.plugins import get_host
from ssl_engine.randomness import BatchRandom
from ssl_engine.registry import UnknownNameError
from ssl_engine.settings import SettingError
from ssl_engine.task import ImageSizeError
from ssl_engine.train.model import RunSetupError, build_model

pytest.importorskip("timm")

VIT = "timm:vit_tiny_patch16_224"
IMAGE_SIZE = 32
# The refusals a run raises before training, each with a message for the user (exit 2).
REFUSALS = (RunSetupError, SettingError, ImageSizeError, UnknownNameError)


def one_step(name: str, settings: dict[str, object] | None = None) -> dict[str, object]:
    """Build task ``name`` (with ``settings``) on the ViT at 32 px and train one step on two images of the embedded
    data.

    Returns:
        ``{"runs": True, "inputs": sorted view sizes the ViT saw, "loss": float}``, or ``{"runs": False,
        "reason": the refusal's message}``.
    """
    registry = get_host().registry
    torch.manual_seed(0)
    try:
        config = PretrainConfig([TaskSpec(name, settings=dict(settings or {}))], backbone=VIT)
        model = build_model(config, registry, IMAGE_SIZE, seed=0)
        registry.tasks[name].obj.check_images(IMAGE_SIZE)
    except REFUSALS as error:
        return {"runs": False, "reason": str(error)}
    [runtime] = model.runtimes
    model.train()
    sizes: set[int] = set()
    embeddings = [module.model.patch_embed for module in model.modules() if hasattr(module, "timm_options")]
    hooks = [embed.register_forward_pre_hook(lambda _, args: sizes.add(args[0].shape[-1])) for embed in embeddings]
    task = runtime.task
    dataset = ShapesDataset("train", IMAGE_SIZE, size=2)
    images = to_float(torch.stack([dataset[i][0] for i in range(2)]))  # (2, 3, 32, 32)
    batch = task.pseudo_labels(images, BatchRandom(0, 1, name, 2))
    output = task.forward(model.backbone, runtime.modules, runtime.aux, batch)
    loss = task.weighted_total(output.losses)
    loss.backward()
    for hook in hooks:
        hook.remove()
    gradients = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert gradients and all(g is not None and torch.isfinite(g).all() for g in gradients), name
    return {"runs": True, "inputs": sorted(sizes), "loss": float(loss.detach())}


@pytest.mark.parametrize("name", get_host().registry.names("task"))
def test_every_task_trains_on_a_vit_or_is_refused_with_a_reason(name: str) -> None:
    result = one_step(name)
    if result["runs"]:
        assert math.isfinite(float(str(result["loss"])))
        assert result["inputs"], "the ViT saw no input"
    else:
        assert str(result["reason"]).strip(), f"task {name!r} was refused without a reason"


@pytest.mark.slow
def test_dinos_local_crops_reach_the_vit_at_their_own_size() -> None:
    if "dino" not in get_host().registry.tasks:
        pytest.skip("the dino plugin is not installed")
    assert one_step("dino")["inputs"] == [32]  # the default: the two global views only
    assert one_step("dino", {"local_crops": 2})["inputs"] == [16, 32]  # multi-crop: 4x4 tokens for the locals


def test_a_decoder_on_a_stride_it_cannot_upsample_is_refused_before_training(tmp_path: Path) -> None:
    if "inpainting" not in get_host().registry.tasks:
        pytest.skip("the inpainting plugin is not installed")
    run = tmp_path / "run"
    result = CliRunner().invoke(main_command, ["pretrain", "--task", "inpainting", "--backbone",
                                               "timm:vit_tiny_patch16_224?depth=1&patch_size=6", "--image-size", "48",
                                               "--steps", "1", "--no-probe", "--out", str(run)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "power of 2" in result.output and "patch_size=4" in result.output
    assert not run.exists()


def main() -> None:
    """Print README's table of the installed tasks on the ViT."""
    print(f"| task | on `{VIT}` at {IMAGE_SIZE} px | inputs the ViT sees (px, patch 4) |")
    print("|---|---|---|")
    for name in get_host().registry.names("task"):
        result = one_step(name)
        if result["runs"]:
            inputs = ", ".join(str(size) for size in result["inputs"])  # type: ignore[attr-defined]
            print(f"| {name} | trains | {inputs} |")
        else:
            print(f"| {name} | refused: {result['reason']} | |")


if __name__ == "__main__":
    main()
