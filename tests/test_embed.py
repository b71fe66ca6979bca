"""``sslx embed``: features of every image with names and labels, as .npz or Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssl_engine.testing import REFERENCE_TASK, cli_plugins, pretrain_cli
from tests.conftest import write_images, write_two_classes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("reference_cli")]  # end to end, on the kit's task


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("embed")
    data = write_two_classes(root / "data", per_class=10, size=24)
    with cli_plugins():
        run = pretrain_cli(root, REFERENCE_TASK, "--data", data, "--image-size", 16, "--batch-size", 4,
                           "--steps", 2, "--workers", 0)  # fmt: skip
    return run, data


def test_embed_writes_every_image_with_names_and_labels_as_npz(
    invoke, trained: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run, data = trained
    (data / "c1" / "img004.png").write_bytes(b"broken")
    try:
        result = invoke(
            "embed", run, "--data", data, "--out", tmp_path / "f.npz", "--batch-size", "7", "--workers", "0"
        )
    finally:
        write_images(data / "c1", 10, size=24, seed=1)  # restored for the other tests
    assert result.exit_code == 0, result.output
    assert "19 images x 256 features" in result.output and "img004.png" in result.output  # left out, named
    stored = np.load(tmp_path / "f.npz")
    assert stored["features"].shape == (19, 256) and stored["features"].dtype == np.float32
    names = list(stored["names"])
    assert len(set(names)) == 19 and "c1/img004.png" not in names and "c0/img000.png" in names
    assert {name.split("/")[0] for name, label in zip(names, stored["labels"], strict=True) if label == 1} == {"c1"}
    assert list(stored["classes"]) == ["c0", "c1"]
    assert json.loads(str(stored["meta"]))["step"] == 2
    assert np.isfinite(stored["features"]).all()


def test_embed_parquet_matches_npz_and_a_split_of_a_data_set(
    invoke, trained: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pq = pytest.importorskip("pyarrow.parquet")
    run, data = trained
    assert invoke("embed", run, "--data", data, "--out", tmp_path / "f.npz", "--workers", "0").exit_code == 0
    result = invoke("embed", run, "--data", data, "--out", tmp_path / "f.parquet", "--workers", "0")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "f.parquet")
    stored = np.load(tmp_path / "f.npz")
    assert table.column("name").to_pylist() == list(stored["names"])
    assert np.allclose(np.array(table.column("feature").to_pylist(), np.float32), stored["features"])
    assert json.loads(table.schema.metadata[b"sslx"])["data"] == str(data)
    shapes = invoke("embed", run, "--data", "shapes", "--split", "test", "--out", tmp_path / "s.npz", "--workers", "0")
    assert shapes.exit_code == 0, shapes.output
    assert np.load(tmp_path / "s.npz")["names"][0] == "test/0"


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--out", "f.csv"), "must end in .npz or .parquet"), (("--data", "/no/such", "--out", "f.npz"), "does not exist"),
     (("--split", "nope", "--out", "f.npz"), "split")],
)  # fmt: skip
def test_embed_bad_input_is_one_line(
    invoke, trained: tuple[Path, Path], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:  # type: ignore[no-untyped-def]
    run, _ = trained
    result = invoke("embed", run, *[str(tmp_path / a) if a.startswith("f.") else a for a in args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
