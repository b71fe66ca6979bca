"""Does pretraining beat random initialisation? Linear-probe accuracy after the default budget, per task and seed.

Runs ``sslx pretrain --task T --seed S`` exactly as a user would (default budget, embedded data, CPU unless a GPU
is present), reads each run's ``probe.json`` (the linear protocol on the trained backbone and on the same backbone
at its random initialisation), and prints a Markdown table for ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/probe_vs_random.py --tasks rotation,jigsaw --seeds 0,1 [--extra "--steps 300"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Pretext metrics the plugins log, in order of preference.
METRICS = ("accuracy", "psnr", "ab_rmse", "lab_rmse")
# `sslx pretrain` as a user runs it, in this interpreter's environment.
SSLX_PRETRAIN = [sys.executable, "-m", "ssl_engine.cli", "pretrain"]


def pretext_metric(task: str, last: dict[str, float]) -> str:
    """The task's own pretext metric from its last logged step, named: ``accuracy 0.867``, ``psnr 21.31``."""
    for name in METRICS:
        if f"{task}/{name}" in last:
            return f"{name} {last[f'{task}/{name}']:.3f}"
    return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="rotation,jigsaw")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--extra", default="", help="more sslx pretrain options, quoted")
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sslx-bench-"))
    rows = []
    for task in args.tasks.split(","):
        for seed in args.seeds.split(","):
            run = out / f"{task}-seed{seed}"
            command = [*SSLX_PRETRAIN, "--task", task, "--seed", seed, "--out", str(run), *shlex.split(args.extra)]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            probe = json.loads((run / "probe.json").read_text())
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            rows.append((task, seed, probe, metrics[-1], seconds))
            print(
                f"{task} seed {seed}: pretrained {probe['pretrained']['accuracy']:.4f} "
                f"random {probe['random_init']['accuracy']:.4f} ({seconds:.0f} s)",
                flush=True,
            )
    print(
        "\n| task | seed | steps | final pretext metric | linear probe, pretrained | linear probe, random init | "
        "difference | wall time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task, seed, probe, last, seconds in rows:
        trained, random_init = probe["pretrained"]["accuracy"], probe["random_init"]["accuracy"]
        print(
            f"| {task} | {seed} | {probe['step']} | {pretext_metric(task, last)} | "
            f"{trained:.4f} | {random_init:.4f} | {trained - random_init:+.4f} | {seconds:.0f} s |"
        )
    beaten = all(p["pretrained"]["accuracy"] > p["random_init"]["accuracy"] for _, _, p, _, _ in rows)
    print(f"\npretrained beats random init in every run: {beaten}")


if __name__ == "__main__":
    main()
