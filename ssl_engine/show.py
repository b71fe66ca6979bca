"""Pictures of what a pretext task asks the network: ``sslx show``.

Tasks draw themselves through :meth:`ssl_engine.task.PretextTask.draw` (default: :mod:`ssl_engine.drawing`); this
module picks the images and the model: a fresh one for ``--task``, a finished run's for ``RUN_DIR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.drawing import default_drawing, to_picture
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.registry import Registry, UnknownNameError
from ssl_engine.run import load_run
from ssl_engine.train.model import build_model, resolve_image_size

__all__ = ["default_drawing", "render", "to_picture"]


def render(
    registry: Registry,
    *,
    run_dir: Path | None = None,
    task: str | None = None,
    data: str | None = None,
    image_size: int | None = None,
    count: int = 6,
    seed: int = 0,
    backbone: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Image.Image]:
    """Pictures of the pretext batches of a task (fresh, on ``backbone`` or the default one, with ``settings``,
    unparsed values as ``--set`` gives them) or of a run's tasks (with the model's predictions).

    Returns:
        task name -> picture.
    """
    if run_dir is not None:
        run = load_run(run_dir, registry)
        model, size, data = run.model, run.image_size, data or run.config.data
        runtimes = [r for r in model.runtimes if task is None or r.spec.name == task]
        if not runtimes:
            raise UnknownNameError("task of this run", str(task), [r.spec.name for r in model.runtimes])
    else:
        if task is None:
            raise ValueError("give --task NAME (or a RUN_DIR)")
        config = PretrainConfig([TaskSpec(task, settings=dict(settings or {}))])
        config = replace(config, backbone=backbone) if backbone else config
        size = image_size or resolve_image_size(config, registry)
        model = build_model(config, registry, size, seed=seed)
        runtimes = model.runtimes
    source = resolve_data(data or "shapes", registry, DataOptions())
    for runtime in runtimes:
        type(runtime.task).check_images(size, source.color)
    split = "val" if source.labelled else source.pretrain_split
    dataset = source.split(split, size)
    images = to_float(torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]))  # type: ignore[arg-type]
    pictures = {}
    model.eval()
    for runtime in runtimes:
        batch = runtime.task.pseudo_labels(images, BatchRandom(seed, 0, runtime.spec.name, len(images)))
        output = None
        if run_dir is not None:
            with torch.no_grad():
                output = runtime.task.forward(model.backbone, runtime.modules, runtime.aux, batch)
        pictures[runtime.spec.name] = runtime.task.draw(images, batch, output)
    return pictures
