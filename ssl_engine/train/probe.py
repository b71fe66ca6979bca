"""Evaluating runs: ``sslx evaluate`` and the linear probe printed at the end of ``sslx pretrain``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.eval.context import EvalContext
from ssl_engine.registry import Registry
from ssl_engine.run import load_run
from ssl_engine.task import Representation
from ssl_engine.train.loop import Trainer, pick_device
from ssl_engine.train.model import PretrainModel


def run_protocol(
    protocol: str, registry: Registry, representation: Representation, context_args: dict[str, Any]
) -> dict[str, Any]:
    evaluate = registry.get("evaluator", protocol).obj
    return dict(evaluate(EvalContext(representation=representation, **context_args)))


def probe_against_random(trainer: Trainer, protocol: str = "linear") -> dict[str, Any]:
    """Linear-probe the trained representation and the same backbone at its random initialisation.

    The random model is rebuilt with the run's seed, so it is exactly the network training started from.
    The report is also written to ``RUN_DIR/probe.json``.
    """
    config, registry = trainer.config, trainer.registry
    args = {
        "source": trainer.source,
        "image_size": trainer.image_size,
        "device": trainer.device,
        "seed": config.seed,
    }
    trained = run_protocol(protocol, registry, trainer.model.representation(), args)
    torch.manual_seed(config.seed)
    random_model = PretrainModel(config, registry, trainer.image_size).to(trainer.device)
    baseline = run_protocol(protocol, registry, random_model.representation(), args)
    report = {
        "protocol": protocol,
        "data": config.data,
        "step": trainer.step,
        "pretrained": trained,
        "random_init": baseline,
    }
    (trainer.out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def evaluate_run(
    run_dir: Path,
    protocol: str,
    registry: Registry,
    *,
    data: str | None = None,
    data_dir: Path | None = None,
    download: bool = False,
    task: str | None = None,
    device: str = "auto",
    label_fraction: float | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's representation with ``protocol``; the result is also written into the run directory.

    Frozen features are cached in ``RUN_DIR/features/`` (keyed by data, image size, checkpoint step and task), so
    further protocols and label fractions don't extract them again.
    """
    registry.get("evaluator", protocol)  # unknown protocol -> error listing the valid ones, before any work
    if label_fraction is not None and not 0 < label_fraction <= 1:
        raise DataError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    run = load_run(run_dir, registry)
    data_name = data or run.config.data
    data_options = DataOptions(
        data_dir if data_dir is not None else (Path(run.config.data_dir) if run.config.data_dir else None),
        download,
    )
    source = resolve_data(data_name, registry, data_options)
    if not source.labelled:
        raise DataError(f"data {data_name!r} has no labels; evaluation needs a labelled data set")
    target = pick_device(device)
    representation = run.model.representation(task).to(target)
    task_name = task or run.config.tasks[0].name
    safe_name = data_name.replace("/", "_").strip("_.")
    result = run_protocol(
        protocol,
        registry,
        representation,
        {
            "source": source,
            "image_size": run.image_size,
            "device": target,
            "seed": run.config.seed,
            "label_fraction": label_fraction,
            "options": dict(options or {}),
            "cache_dir": run_dir / "features",
            "cache_key": f"{safe_name}-{run.image_size}px-step{run.checkpoint.step}-{task_name}",
        },
    )
    result |= {"run": str(run_dir), "data": data_name, "step": run.checkpoint.step, "task": task_name}
    if label_fraction is not None:
        result["label_fraction"] = label_fraction
    suffix = f"-labels{label_fraction:g}" if label_fraction is not None else ""
    (run_dir / f"eval-{protocol}-{safe_name}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
