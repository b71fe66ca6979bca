"""Does the engine's step do more work than a plain loop? CPU time and wall time per step, alternating.

``benchmarks/throughput.py`` times blocks of steps of each contender, which a busy machine can bias; this script
times single steps of (a) the engine's step and (b) the plain PyTorch loop (the same two contenders, from
``throughput.py``), alternating a b, b a, a b, ... so both see the same machine, and reports the median of each
step's CPU time (``time.process_time``: every thread of the process, so work, not waiting for a core) beside its
wall time. Equal CPU time means the engine adds no work; a wall-time gap with equal CPU time is the machine.

Usage::

    python benchmarks/step_cpu_time.py --tasks rotation,simclr [--threads 1] [--steps 30]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import EngineContender, Options, PlainContender, make_trainer  # noqa: E402

WARMUP = 3


def step_times(contender: EngineContender | PlainContender) -> tuple[float, float]:
    """One step of ``contender``: (CPU seconds of the whole process, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    contender.step()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(task: str, backbone: str, steps: int, batch_size: int) -> str:
    """A Markdown row: median CPU and wall milliseconds per step of (a) and (b), and the ratios b/a."""
    options = Options(
        tasks=[task], backbones=[backbone], batch_size=batch_size, steps=1, repeats=steps + WARMUP, warmup=0,
        workers=0, device=torch.device("cpu"), seed=0, peak=None,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(task, backbone, options, Path(tmp) / "run")
        batches = [batch for batch, _ in itertools.islice(trainer.stream.batches(0), 8)]
        engine, plain = EngineContender(trainer), PlainContender(trainer, batches, options.seed)
        for _ in range(WARMUP):
            engine.step()
            plain.step()
        times: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
        for index in range(steps):
            order = (("a", engine), ("b", plain)) if index % 2 == 0 else (("b", plain), ("a", engine))
            for name, contender in order:
                times[name].append(step_times(contender))
    cpu = {name: 1e3 * statistics.median(t[0] for t in found) for name, found in times.items()}
    wall = {name: 1e3 * statistics.median(t[1] for t in found) for name, found in times.items()}
    return (
        f"| {task} | {backbone} | {torch.get_num_threads()} | {cpu['a']:.1f} | {cpu['b']:.1f} | "
        f"{cpu['b'] / cpu['a']:.3f} | {wall['a']:.1f} | {wall['b']:.1f} | {wall['b'] / wall['a']:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="rotation,simclr")
    parser.add_argument("--backbone", default="smallconv")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each contender")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| task | backbone | threads | (a) CPU ms | (b) CPU ms | b/a | (a) wall ms | (b) wall ms | b/a |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        print(measure(task, args.backbone, args.steps, args.batch_size), flush=True)


if __name__ == "__main__":
    main()
