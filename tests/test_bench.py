"""``sslx bench``: the comparison table with reference rows, written as Markdown, CSV and PNG, and resumable."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_engine.data import idx_files
from ssl_engine.testing import REFERENCE_TASK as REFERENCE
from tests.conftest import ColourTask, LargeImagesTask
from tests.test_data import write_idx

LARGE, COLOUR = LargeImagesTask.name, ColourTask.name
pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's tasks: the core's behaviour, no plugin needed


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The random-init row's user cache, in the test's own folder."""
    monkeypatch.setenv("SSLX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.slow
def test_bench_writes_table_csv_chart_and_skips_finished_rows(invoke, image_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench"
    args = ("bench", "--tasks", f"{REFERENCE},{LARGE}", "--data", image_folder, "--image-size", "24", "--steps", "2",
            "--batch-size", "8", "--protocols", "linear,knn", "--set", "k=5", "--out", out)  # fmt: skip
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    table = (out / "table.md").read_text()
    assert "| method | linear | knn |" in table
    said = first.stderr
    for place, method in enumerate((REFERENCE, LARGE), 1):
        assert f"| {method} |" in table and f"[{place}/4] " in said and f"{method}: pretraining for 2 steps" in said
        assert (
            f"{method}: extracting features of 72 train images" in said
        )  # 90 less 10% val and f"{method}: done in " in said
    assert (
        "[3/4] random init: evaluating the backbone at its random initialisation (linear, knn); no training; about"
        in said
    )
    assert "random init: train" not in said
    assert (
        "[4/4] supervised: training the backbone with the labels for 2 steps, then evaluating (linear, knn); abo"
        in said
    )
    assert "supervised: training with labels for 2 steps of 8 images" in said  # its progress, then its evaluation
    assert f"wrote {out / 'table.md'}, {out / 'table.csv'}" in said and f"wrote {out / 'chart.png'}" in said
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted([REFERENCE, LARGE])  # no runs/supervised
    assert not list(out.glob("**/.*.tmp"))  # every file written whole
    with open(out / "table.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["method", "linear", "knn"] and [r[0] for r in rows[1:]] == [
        REFERENCE, LARGE, "random init", "supervised"]  # fmt: skip
    assert all(0 <= float(value) <= 1 for row in rows[1:] for value in row[1:])
    with Image.open(out / "chart.png") as chart:
        assert chart.format == "PNG" and chart.width > 300
    assert table in first.output  # printed too
    again = invoke(*args)
    assert again.exit_code == 0
    assert "pretraining for" not in again.output and again.output.count("done before, kept") == 4
    assert f"[3/4] random init: done before, kept ({out / 'rows' / 'random-init.json'})" in again.stderr
    assert (out / "table.md").read_text() == table


def test_bench_marks_tasks_that_cannot_run_as_na(invoke, image_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench"
    result = invoke("bench", "--tasks", LARGE, "--data", image_folder, "--image-size", "16", "--steps", "1",
                    "--batch-size", "8", "--protocols", "knn", "--set", "k=5", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"| {LARGE} | n/a |" in (out / "table.md").read_text() and "needs images of at least" in result.output


def test_bench_unknown_names_exit_2(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke("bench", "--tasks", f"{REFERENCE},telepathy", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "unknown task 'telepathy'" in result.output
    result = invoke("bench", "--tasks", REFERENCE, "--protocols", "vibes", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "unknown evaluator 'vibes'" in result.output


@pytest.mark.slow
def test_colour_tasks_on_grayscale_data_are_na_and_the_references_still_train(  # type: ignore[no-untyped-def]
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (60, 28, 28)), np.arange(60) % 2
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(idx_files, "DEBIAN_FASHION_MNIST", tmp_path)  # a tiny grayscale Fashion-MNIST
    out = tmp_path / "bench"
    result = invoke("bench", "--tasks", f"{COLOUR},{REFERENCE}", "--data", "fashion-mnist", "--image-size", "16",
                    "--steps", "1", "--batch-size", "8", "--protocols", "knn", "--set", "k=5",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert f"| {COLOUR} | n/a |" in table and "needs colour images" in result.output
    for method in (REFERENCE, "random init", "supervised"):
        assert f"| {method} | n/a |" not in table and f"| {method} |" in table, table


@pytest.mark.slow
def test_random_init_row_is_read_from_the_user_cache_by_the_next_bench(  # type: ignore[no-untyped-def]
    invoke, image_folder: Path, tmp_path: Path, own_cache: Path
) -> None:
    args = ("bench", "--tasks", REFERENCE, "--data", image_folder, "--image-size", "16", "--steps", "1",
            "--batch-size", "8", "--protocols", "linear,knn", "--set", "k=5")  # fmt: skip
    first = invoke(*args, "--out", tmp_path / "one")
    assert first.exit_code == 0, first.output
    assert "random init: extracting features" in first.stderr and len(list(own_cache.glob("random-init/*"))) == 2
    second = invoke(*args, "--out", tmp_path / "two")
    assert second.exit_code == 0, second.output
    assert "random init: extracting features" not in second.stderr
    assert (
        "random init: linear: read from the cache" in second.stderr and "random init: knn: read from" in second.stderr
    )
    one, two = ((tmp_path / name / "rows" / "random-init.json").read_text() for name in ("one", "two"))
    assert one == two
