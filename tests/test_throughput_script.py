"""``benchmarks/throughput.py`` runs end to end on the CPU (its CUDA timing path a no-op there) and prints its
table with the ratios and, with ``--profile``, where each contender spends its time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_throughput_benchmark_prints_its_table_and_profile() -> None:
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "throughput.py"), "--tasks", "rotation",
               "--backbones", "smallconv", "--batch-size", "8", "--steps", "1", "--repeats", "2", "--warmup", "1",
               "--settle", "0", "--workers", "0", "--threads", "1", "--profile", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    [row] = [line for line in out.splitlines() if line.startswith("| rotation | smallconv |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    ab, ac = float(cells[-2]), float(cells[-1])
    assert ab > 0 and ac > 0
    assert "rotation/smallconv (a) under the profiler" in out and "aten operators/step" in out
    assert "per-repeat (a)/(b) median" in out
