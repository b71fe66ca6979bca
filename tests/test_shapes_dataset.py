"""Tests of the embedded procedural shapes data set: determinism, API contract and learnability checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssl_engine.data.shapes import CLASS_NAMES, COOL_HUES, SPLIT_SIZES, WARM_HUES, ShapesDataset, render_image

REPO_ROOT = Path(__file__).resolve().parents[1]


def _batch(split: str, count: int, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[0, count)`` of ``split`` as floats in [0, 1], (N, 3, S, S), and their labels, (N,)."""
    images, labels = zip(*(render_image(split, i, image_size) for i in range(count)), strict=True)
    return torch.stack(images).float() / 255, torch.tensor(labels)


def _structure(images: torch.Tensor) -> torch.Tensor:
    """Distance of each pixel's brightness from the image's median, (N, 1, S, S).

    Objects are dark on light or light on dark at random, so raw brightness averages out; distance from the
    (mostly background) median keeps where the object is whatever its polarity.
    """
    gray = images.mean(1, keepdim=True)
    median = gray.flatten(1).median(1).values[:, None, None, None]
    return (gray - median).abs()


def _linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, classes: int
) -> float:
    """Test accuracy of an L2-regularised logistic regression fitted with L-BFGS on standardised features."""
    # The problem is tiny: extra threads only add contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_and_score(train_x, train_y, test_x, test_y, classes)
    finally:
        torch.set_num_threads(threads)


def _fit_and_score(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, classes: int
) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=100)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return (test_x @ weight + bias).argmax(1).eq(test_y).float().mean().item()


def _hue_saturation_value(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSV of each pixel of ``(N, 3, S, S)`` images in [0, 1]: hue in turns, each ``(N, S, S)``."""
    value, brightest = images.max(1)
    spread = value - images.min(1).values
    red, green, blue = images.unbind(1)
    chroma = spread.clamp_min(1e-6)
    sector = torch.where(
        brightest == 0,
        ((green - blue) / chroma) % 6,
        torch.where(brightest == 1, (blue - red) / chroma + 2, (red - green) / chroma + 4),
    )
    return sector / 6, spread / value.clamp_min(1e-6), value


def _in_band(hue: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Whether each hue lies in ``band`` (turns; the band may start below 0, wrapping round red)."""
    return ((hue - band[0]) % 1.0) <= band[1] - band[0]


def _hue_histogram(images: torch.Tensor, bins: int = 12) -> torch.Tensor:
    """Share of each image's pixels that are clearly coloured, per hue bin: ``(N, bins)``."""
    hue, saturation, _ = _hue_saturation_value(images)
    bin_of_pixel = (hue * bins).long().clamp(0, bins - 1).flatten(1)
    histogram = torch.zeros(len(images), bins)
    histogram.scatter_add_(1, bin_of_pixel, (saturation > 0.4).float().flatten(1))
    return histogram / bin_of_pixel.shape[1]


@pytest.fixture(scope="module")
def train_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _batch("train", 500)


@pytest.fixture(scope="module")
def val_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _batch("val", 300)


def test_constants() -> None:
    assert len(CLASS_NAMES) == 10
    assert len(set(CLASS_NAMES)) == 10
    assert SPLIT_SIZES == {"train": 10000, "val": 2000, "test": 2000}


def test_same_index_gives_identical_image_and_different_indices_differ() -> None:
    first, label = render_image("train", 17, 32)
    again, label_again = render_image("train", 17, 32)
    assert torch.equal(first, again)
    assert label == label_again
    other, _ = render_image("train", 18, 32)
    assert not torch.equal(first, other)
    same_class, same_label = render_image("train", 27, 32)
    assert same_label == label
    assert not torch.equal(first, same_class)


def test_images_are_identical_in_a_fresh_process() -> None:
    # A fresh interpreter gets a different str-hash salt, so this catches seeding through hash().
    code = (
        "import hashlib, sys\n"
        "from ssl_engine.data.shapes import render_image\n"
        "for i in (0, 5, 1234):\n"
        "    image, label = render_image('val', i, 24)\n"
        "    print(label, hashlib.sha256(image.numpy().tobytes()).hexdigest())\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    env["PYTHONHASHSEED"] = "random"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    expected = []
    for i in (0, 5, 1234):
        image, label = render_image("val", i, 24)
        expected.append(f"{label} {hashlib.sha256(image.numpy().tobytes()).hexdigest()}")
    assert result.stdout.split("\n")[:3] == expected


@pytest.mark.parametrize("size", [8, 16, 33, 64, 128])
def test_shape_and_dtype(size: int) -> None:
    image, label = render_image("test", 3, size)
    assert image.shape == (3, size, size)
    assert image.dtype == torch.uint8
    assert isinstance(label, int) and 0 <= label < 10
    # Not a blank canvas: an object and a background of different brightness.
    assert image.float().std() > 10


def test_label_does_not_depend_on_image_size() -> None:
    for index in range(20):
        assert render_image("train", index, 16)[1] == render_image("train", index, 48)[1]


def test_splits_differ() -> None:
    images = [render_image(split, index, 32)[0] for split in SPLIT_SIZES for index in range(5)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not torch.equal(images[i], images[j])


def test_all_labels_appear_balanced(train_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, labels = train_batch
    counts = torch.bincount(labels[:300], minlength=10)
    assert (counts > 0).all()
    assert counts.min() >= 20 and counts.max() <= 40, counts


def test_colour_does_not_identify_the_class(
    train_batch: tuple[torch.Tensor, torch.Tensor], val_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    (train_images, train_labels), (val_images, val_labels) = train_batch, val_batch
    train_rgb, val_rgb = train_images.mean((2, 3)), val_images.mean((2, 3))
    class_means = torch.stack([train_rgb[train_labels == c].mean(0) for c in range(10)])
    spread = class_means.max(0).values - class_means.min(0).values
    # 50 images a class: sampling noise alone gives a spread of about 0.08 per channel.
    assert (spread < 0.15).all(), spread
    accuracy = _linear_probe_accuracy(train_rgb, train_labels, val_rgb, val_labels, 10)
    assert accuracy < 0.2, accuracy
    # Nor do the hues present: every class paints its parts in the same bands.
    train_hues, val_hues = _hue_histogram(train_images), _hue_histogram(val_images)
    accuracy = _linear_probe_accuracy(train_hues, train_labels, val_hues, val_labels, 10)
    assert accuracy < 0.2, accuracy


def test_parts_have_usual_colours() -> None:
    """Secondary parts are red to orange and accents cyan to blue, so a gray image's colours can be guessed.

    With every colour drawn at random, as the background and the main body are, only about 40% of images would hold
    that many clearly coloured pixels in each band (measured); with the usual colours about 95% do.
    """
    images, labels = _batch("val", 200, 64)
    hue, saturation, value = _hue_saturation_value(images)
    clear = (saturation > 0.45) & (value > 0.1)
    warm_pixels = (clear & _in_band(hue, WARM_HUES)).flatten(1).sum(1)
    cool_pixels = (clear & _in_band(hue, COOL_HUES)).flatten(1).sum(1)
    without_accents = torch.tensor([CLASS_NAMES.index(name) for name in ("tree", "person", "chair")])
    has_accents = ~torch.isin(labels, without_accents)
    assert (warm_pixels >= 20).float().mean() > 0.85
    assert (cool_pixels[has_accents] >= 10).float().mean() > 0.85


def test_classes_are_separable_by_shape(
    train_batch: tuple[torch.Tensor, torch.Tensor], val_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    (train_images, train_labels), (val_images, val_labels) = train_batch, val_batch
    train_x = F.adaptive_avg_pool2d(_structure(train_images), 8).flatten(1)
    val_x = F.adaptive_avg_pool2d(_structure(val_images), 8).flatten(1)
    accuracy = _linear_probe_accuracy(train_x, train_labels, val_x, val_labels, 10)
    # Chance is 0.1; a linear model on 8x8 pixels gets about 0.35, a trained network far more.
    assert accuracy > 0.2, accuracy


def test_images_have_an_upright_orientation(train_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = train_batch
    average = _structure(images).mean(0)[0]
    for turns in (1, 2):
        rotated = average.rot90(turns)
        assert (average - rotated).abs().mean() > 0.2 * average.mean(), turns


def test_rotation_is_predictable(train_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = train_batch
    structure = _structure(images[:400])
    rotated = torch.cat([structure.rot90(k, (2, 3)) for k in range(4)])
    features = F.adaptive_avg_pool2d(rotated, 8).flatten(1)
    turns = torch.arange(4).repeat_interleave(400)
    held_out = torch.arange(len(turns)) % 400 >= 300
    accuracy = _linear_probe_accuracy(features[~held_out], turns[~held_out], features[held_out], turns[held_out], 4)
    # Chance is 0.25; about 0.65 is typical.
    assert accuracy > 0.45, accuracy


def test_dataset_api() -> None:
    dataset = ShapesDataset("val", 16)
    assert len(dataset) == SPLIT_SIZES["val"]
    assert dataset.classes == list(CLASS_NAMES)
    image, label = dataset[7]
    reference, reference_label = render_image("val", 7, 16)
    assert torch.equal(image, reference) and label == reference_label
    assert torch.equal(dataset[-1][0], render_image("val", SPLIT_SIZES["val"] - 1, 16)[0])
    with pytest.raises(IndexError):
        dataset[SPLIT_SIZES["val"]]


def test_size_override_keeps_images() -> None:
    small = ShapesDataset("train", 16, size=5)
    assert len(small) == 5
    assert torch.equal(small[4][0], render_image("train", 4, 16)[0])
    with pytest.raises(IndexError):
        small[5]
    large = ShapesDataset("test", 16, size=SPLIT_SIZES["test"] + 500)
    assert torch.equal(large[2300][0], render_image("test", 2300, 16)[0])


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="train.*val.*test"):
        ShapesDataset("bogus", 32)
    with pytest.raises(ValueError, match="train.*val.*test"):
        render_image("validation", 0, 32)
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset("train", 7)
    with pytest.raises(ValueError, match="image_size"):
        render_image("train", 0, 4)
    with pytest.raises(ValueError):
        render_image("train", -1, 32)
    with pytest.raises(ValueError):
        ShapesDataset("train", 32, size=-1)


def test_rendered_images_are_kept_for_a_second_pass_and_stay_unchanged() -> None:
    from ssl_engine.data.shapes import rendered_images

    rendered_images.cache_clear()  # what earlier tests of this process rendered
    first = ShapesDataset("test", 24)
    image, label = first[7]
    assert bool(rendered_images("test", 24).done[7])
    image.zero_()  # a caller's change to what it was given
    again, label_again = ShapesDataset("test", 24)[7]
    expected, expected_label = render_image("test", 7, 24)
    assert torch.equal(again, expected) and label_again == label == expected_label
    assert not bool(rendered_images("test", 24).done[8])  # only what was asked for is rendered
