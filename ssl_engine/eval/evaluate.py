"""Evaluating runs: ``sslx evaluate`` and the linear probe printed at the end of ``sslx pretrain``.

Both consume a :class:`~ssl_engine.run.Run`: a finished one read back with :func:`~ssl_engine.run.load_run`, or the
one just trained. Results are written into the run directory atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ssl_engine.atomic_files import write_json_atomic
from ssl_engine.data.catalog import DataSource, resolve_data
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.distributed import pick_device
from ssl_engine.eval.context import EvalContext
from ssl_engine.eval.random_init_cache import RandomInitCache, evaluated_split_sizes, random_init_key
from ssl_engine.progress import PhaseProgress, seconds
from ssl_engine.registry import Registry
from ssl_engine.run import Run, load_run
from ssl_engine.task import Representation
from ssl_engine.train.model import build_model

PROBE_FILE = "probe.json"
FEATURES_DIR = "features"


def features_key(data: str, image_size: int, step: int, task: str) -> str:
    """What names a run's cached frozen features in ``RUN_DIR/features/``: data, image size, step and task."""
    return f"{data.replace('/', '_').strip('_.')}-{image_size}px-step{step}-{task}"


def run_protocol(
    protocol: str,
    registry: Registry,
    representation: Representation,
    context_args: dict[str, Any],
    progress: PhaseProgress | None = None,
) -> dict[str, Any]:
    """Call the registered evaluator ``protocol`` on ``representation``; its result as a plain dict."""
    evaluate = registry.get("evaluator", protocol).obj
    context = EvalContext(representation=representation, progress=progress or PhaseProgress(), **context_args)
    return dict(evaluate(context))


def probe_against_random(
    run: Run,
    step: int | None = None,
    protocol: str = "linear",
    *,
    cache: RandomInitCache | None = None,
    progress: PhaseProgress | None = None,
) -> dict[str, Any]:
    """Linear-probe the run's trained representation and the same backbone at its random initialisation.

    ``step`` is the step the model's weights are at (default: the checkpoint the run was built from).

    The random model is rebuilt with the run's seed (:func:`~ssl_engine.train.model.build_model`), so it is exactly
    the network training started from. Its result depends only on the network, the data and the protocol, so it
    is read from the user cache when an earlier run computed it (``cache``, default
    :meth:`RandomInitCache.default`; see :mod:`ssl_engine.eval.random_init_cache`) and stored there otherwise.
    ``progress`` reports each phase (default: on stderr). The report is also written to ``RUN_DIR/probe.json``;
    its ``random_init_cache`` says which entry was used and whether it was a hit. The trained representation's
    features are kept in ``RUN_DIR/features/`` as :func:`evaluate_run` keeps them, so a later ``sslx evaluate``
    of the run on its data (another protocol, a label fraction) does not extract them again.
    """
    progress = progress or PhaseProgress()
    cache = cache or RandomInitCache.default()
    source: DataSource = run.data()
    args: dict[str, Any] = {
        "source": source,
        "image_size": run.image_size,
        "device": run.device,
        "seed": run.config.seed,
    }
    evaluate = run.registry.get("evaluator", protocol).obj
    started = time.perf_counter()
    # The trained features are kept where `sslx evaluate` looks for them: the evaluations the closing lines suggest
    # (or one after a Ctrl-C here) then extract nothing again.
    step = run.step if step is None else step
    trained_context = EvalContext(run.model.representation(), progress=progress.labelled("pretrained"), **args)
    if run.out is not None:
        trained_context.cache_dir = run.out / FEATURES_DIR
        trained_context.cache_key = features_key(run.config.data, run.image_size, step, run.config.tasks[0].name)
    trained = dict(evaluate(trained_context))
    trained_seconds = time.perf_counter() - started

    random_model = build_model(run.config, run.registry, run.image_size, seed=run.config.seed)
    random_representation = random_model.representation()
    sizes = evaluated_split_sizes(source, run.image_size, trained_context.split_sizes())
    key = random_init_key(random_representation, source, sizes, run.image_size, protocol=protocol,
                          seed=run.config.seed, device=run.device, backbone=run.config.backbone)  # fmt: skip
    said = progress.labelled("random init")
    cached = cache.load(key)
    if cached is not None:
        baseline, hit, path = cached.result, True, cached.path
        said.note(f"read from the cache ({path}; computing it took {seconds(cached.seconds)})")
    else:
        said.note(
            f"not in the cache yet: evaluating it, about {seconds(trained_seconds)} like the pretrained backbone; "
            f"then kept in {cache.folder} for later runs"
        )
        started = time.perf_counter()
        baseline = dict(evaluate(EvalContext(random_representation.to(run.device), progress=said, **args)))
        stored = cache.store(key, baseline, time.perf_counter() - started)
        hit, path = False, stored if stored is not None else cache.path(key)
    report = {
        "protocol": protocol,
        "data": run.config.data,
        "step": step,
        "pretrained": trained,
        "random_init": baseline,
        "random_init_cache": {"path": str(path), "hit": hit},
    }
    if run.out is not None:
        write_json_atomic(run.out / PROBE_FILE, report)
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
    progress: PhaseProgress | None = None,
) -> dict[str, Any]:
    """Evaluate a run's representation with ``protocol``; the result is also written into the run directory.

    Frozen features are cached in ``RUN_DIR/features/`` (keyed by data, image size, checkpoint step and task), so
    further protocols and label fractions don't extract them again. ``progress`` reports each phase (default: on
    stderr).
    """
    registry.get("evaluator", protocol)  # unknown protocol -> error listing the valid ones, before any work
    if label_fraction is not None and not 0 < label_fraction <= 1:
        raise DataError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    run = load_run(run_dir, registry, device=pick_device(device))
    data_name = data or run.config.data
    data_options = DataOptions(
        data_dir if data_dir is not None else (Path(run.config.data_dir) if run.config.data_dir else None),
        download,
    )
    source = resolve_data(data_name, registry, data_options)
    if not source.labelled:
        raise DataError(f"data {data_name!r} has no labels; evaluation needs a labelled data set")
    representation = run.model.representation(task)
    task_name = task or run.config.tasks[0].name
    safe_name = data_name.replace("/", "_").strip("_.")  # the result file's name
    progress = progress or PhaseProgress()
    progress.note(
        f"{protocol} protocol on {data_name} ({run.image_size} px): the {task_name} representation at step {run.step}"
    )
    result = run_protocol(
        protocol,
        registry,
        representation,
        {
            "source": source,
            "image_size": run.image_size,
            "device": run.device,
            "seed": run.config.seed,
            "label_fraction": label_fraction,
            "options": dict(options or {}),
            "cache_dir": run_dir / FEATURES_DIR,
            "cache_key": features_key(data_name, run.image_size, run.step, task_name),
        },
        progress,
    )
    result |= {"run": str(run_dir), "data": data_name, "step": run.step, "task": task_name}
    if label_fraction is not None:
        result["label_fraction"] = label_fraction
    suffix = f"-labels{label_fraction:g}" if label_fraction is not None else ""
    write_json_atomic(run_dir / f"eval-{protocol}-{safe_name}{suffix}.json", result)
    return result
