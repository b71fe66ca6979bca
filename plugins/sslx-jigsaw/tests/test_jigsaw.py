"""Behaviour of the jigsaw task: the permutation set, the tiles, the labels, and a real CLI run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sslx_jigsaw import plugin
from sslx_jigsaw.permutations import all_permutations, hamming_distances, permutation_set
from sslx_jigsaw.task import JigsawTask
from torch import Tensor

from ssl_engine.api import ImageSizeError, SettingError
from ssl_engine.testing import KIT_DATA, checkpoint_keys, cli_plugins, pretrain_cli, run_cli, task_instance
from ssl_engine.testing import pretext_batch as draw

PERMS = 100


def min_distance(permutations: np.ndarray) -> int:
    distances = hamming_distances(permutations)
    return int(distances[~np.eye(len(permutations), dtype=bool)].min())


# --- the permutation set -----------------------------------------------------------------------------------
def test_all_permutations_are_the_9_factorial_distinct_ones() -> None:
    every = all_permutations(9)
    assert every.shape == (362880, 9) and every.dtype == np.uint8
    assert (np.sort(every, axis=1) == np.arange(9)).all()
    assert len(np.unique(every, axis=0)) == 362880


@pytest.mark.parametrize("size", [2, 10, PERMS])
def test_permutation_set_is_valid_unique_and_deterministic(size: int) -> None:
    chosen = permutation_set(size)
    assert chosen.shape == (size, 9)
    assert (np.sort(chosen, axis=1) == np.arange(9)).all()  # each row is a permutation of the 9 cells
    assert len(np.unique(chosen, axis=0)) == size
    permutation_set.cache_clear()
    assert (permutation_set(size) == chosen).all()  # recomputed, not just cached
    assert not (permutation_set(size, seed=1) == chosen).all()


def test_permutation_set_is_far_apart() -> None:
    chosen = permutation_set(PERMS)
    distances = hamming_distances(chosen)[~np.eye(PERMS, dtype=bool)]
    # Measured: min 6, mean 8.08 (the paper's sum-greedy set of 100 has min 2, mean 8.08).
    assert distances.min() >= 6
    assert distances.mean() >= 8.0
    rng = np.random.default_rng(0)
    for _ in range(3):
        random_set = all_permutations(9)[rng.choice(362880, PERMS, replace=False)]
        assert min_distance(chosen) >= min_distance(random_set)


def test_permutation_set_is_greedy_max_min() -> None:
    """Each member is, of all 9! permutations, one farthest (in min distance) from the members before it."""
    size = 40
    chosen = permutation_set(size)
    every = all_permutations(9).astype(np.int16)
    nearest = np.full(len(every), 10)
    added = []
    for k in range(size):
        if k > 0:
            best = nearest.max()
            reached = (chosen[:k].astype(np.int16) != chosen[k]).sum(axis=1).min()
            assert reached == best, f"member {k} is {reached} from the set, a candidate was {best}"
            added.append(reached)
        nearest = np.minimum(nearest, (every != chosen[k]).sum(axis=1))
    assert added == sorted(added, reverse=True)  # greedy max-min distances never increase
    assert (permutation_set(10) == chosen[:10]).all()  # a smaller set is a prefix of a larger one


def test_permutation_set_size_is_validated() -> None:
    with pytest.raises(ValueError):
        permutation_set(1)
    with pytest.raises(SettingError, match="permutations"):
        task_instance(JigsawTask, permutations=1001)


# --- the tiles ---------------------------------------------------------------------------------------------
def reference_tiles(images: Tensor, offsets: Tensor, cell: int, tile: int, start: int) -> Tensor:
    """Plain loops: the tile of each cell, in cell order, standardised per tile and channel."""
    batch = []
    for b in range(len(images)):
        tiles = []
        for c in range(9):
            top = start + (c // 3) * cell + int(offsets[b, c, 0])
            left = start + (c % 3) * cell + int(offsets[b, c, 1])
            crop = images[b, :, top : top + tile, left : left + tile]
            mean = crop.mean(dim=(1, 2), keepdim=True)
            std = crop.std(dim=(1, 2), keepdim=True)
            tiles.append((crop - mean) / (std + 1e-5))
        batch.append(torch.stack(tiles))
    return torch.stack(batch)  # (B, 9, 3, tile, tile)


@pytest.mark.parametrize("image_size", [48, 50])  # 50: the centre 48 px are cut, one leftover pixel each side
def test_unshuffled_tiles_match_a_plain_crop_of_their_cells(image_size: int) -> None:
    task = task_instance(JigsawTask, image_size, gray_probability=0.0)
    images = torch.rand(6, 3, image_size, image_size)
    batch = draw(task, images)
    cell, tile = 16, 14
    assert batch.inputs.shape == (6 * 9, 3, tile, tile) and batch.views == 9
    assert batch.targets.shape == (6,) and batch.targets.dtype == torch.int64
    permutations = torch.from_numpy(permutation_set(PERMS).astype(np.int64))
    assert (batch.extras["permutations"] == permutations[batch.targets]).all()
    shown = batch.inputs.view(6, 9, 3, tile, tile)
    unshuffled = torch.empty_like(shown)
    for b in range(6):
        for position in range(9):
            # Convention: input position i shows cell permutations[target][i].
            unshuffled[b, permutations[batch.targets[b], position]] = shown[b, position]
    expected = reference_tiles(images, batch.extras["offsets"], cell, tile, (image_size - 3 * cell) // 2)
    torch.testing.assert_close(unshuffled, expected, atol=1e-4, rtol=1e-4)


def test_tiles_stay_inside_their_cells_and_offsets_vary() -> None:
    task = task_instance(JigsawTask, 64)  # 21 px cells, 18 px tiles: offsets 0..3
    batch = draw(task, torch.rand(64, 3, 64, 64))
    offsets = batch.extras["offsets"]
    assert offsets.shape == (64, 9, 2)
    # Inside its cell, so neighbouring cells' tiles never share a pixel (the gap of the paper).
    assert offsets.min() >= 0 and offsets.max() <= 21 - 18
    assert len(torch.unique(offsets)) == 4  # every offset in [0, cell - tile] is used
    assert len({tuple(o.flatten().tolist()) for o in offsets}) == 64  # different jitter per sample
    assert len(torch.unique(batch.targets)) > 20  # permutations vary across samples


def test_each_tile_is_standardised_on_its_own() -> None:
    task = task_instance(JigsawTask, 48)
    # Per-image contrast and colour casts, which the standardisation must remove.
    images = torch.rand(4, 3, 48, 48) * (0.2 + 0.5 * torch.rand(4, 3, 1, 1)) + 0.3 * torch.rand(4, 3, 1, 1)
    inputs = draw(task, images).inputs
    torch.testing.assert_close(inputs.mean(dim=(2, 3)), torch.zeros(36, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(inputs.std(dim=(2, 3)), torch.ones(36, 3), atol=1e-3, rtol=0)


def test_gray_puzzles_have_identical_channels() -> None:
    images = torch.rand(200, 3, 24, 24)
    batch = draw(task_instance(JigsawTask, 24, gray_probability=0.5), images)
    tiles = batch.inputs.view(200, 9, 3, 7, 7)
    channels_equal = torch.isclose(tiles[:, :, 0], tiles[:, :, 1], atol=1e-5).flatten(1).all(dim=1)
    assert (channels_equal == batch.extras["gray"]).all()
    assert 60 < int(batch.extras["gray"].sum()) < 140
    assert not draw(task_instance(JigsawTask, 24, gray_probability=0.0), images).extras["gray"].any()
    assert draw(task_instance(JigsawTask, 24, gray_probability=1.0), images).extras["gray"].all()


def test_same_seed_and_step_give_the_same_puzzles() -> None:
    task = task_instance(JigsawTask, 48)
    images = torch.rand(8, 3, 48, 48)
    first, again = draw(task, images, step=3), draw(task, images, step=3)
    assert torch.equal(first.targets, again.targets) and torch.equal(first.inputs, again.inputs)
    other = draw(task, images, step=4)
    assert not torch.equal(first.targets, other.targets)
    assert not torch.equal(first.extras["offsets"], other.extras["offsets"])


def test_forward_gives_a_loss_and_accuracy() -> None:
    task = task_instance(JigsawTask, 48, permutations=30)
    backbone, modules = task.context.make_backbone(3), task.build_modules()  # feature_dim 32, as the context says
    batch = draw(task, torch.rand(4, 3, 48, 48))
    output = task.forward(backbone, modules, torch.nn.ModuleDict(), batch)
    assert output.predictions is not None and output.predictions.shape == (4, 30)
    assert set(output.losses) == {"jigsaw"} and torch.isfinite(output.losses["jigsaw"])
    output.losses["jigsaw"].backward()
    assert 0 <= float(output.metrics["accuracy"]) <= 1


# --- image size --------------------------------------------------------------------------------------------
def test_too_small_images_are_refused_naming_the_minimum(tmp_path: Path) -> None:
    assert JigsawTask.min_image_size == 24
    JigsawTask.check_images(24)
    with pytest.raises(ImageSizeError, match="at least 24 px"):
        JigsawTask.check_images(23)
    with pytest.raises(ImageSizeError, match="at least 24 px"):
        task_instance(JigsawTask, 23)
    task_instance(JigsawTask, 24)
    # A smaller tile fraction needs larger images: 0.4 gives 7 px tiles from 17 px cells (16 give 6): 51 px.
    context = task_instance(JigsawTask, 51, tile_fraction=0.4).context
    with pytest.raises(ImageSizeError, match="at least 51 px"):
        JigsawTask(replace(context, image_size=50))
    with cli_plugins(("jigsaw", plugin)):  # and the command line says so before anything is written
        refused = run_cli("pretrain", "--task", "jigsaw", "--image-size", 16, "--out", tmp_path / "run")
    assert refused.exit_code == 2 and "at least 24 px" in refused.stderr and not (tmp_path / "run").exists()


# --- the real command line ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_pretrains_and_writes_a_checkpoint(tmp_path: Path) -> None:
    with cli_plugins(("jigsaw", plugin)):
        run = pretrain_cli(tmp_path, "jigsaw", "--data", KIT_DATA, "--image-size", 48)
    assert any(key.startswith("task/jigsaw/") for key in checkpoint_keys(run))
