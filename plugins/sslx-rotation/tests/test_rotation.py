"""Rotation prediction: the views are the four exact rotations, labelled by their angle."""

from __future__ import annotations

import numpy as np
import torch
from sslx_rotation.task import RotationTask, rotate_all

from ssl_engine.api import BatchRandom, normalize
from ssl_engine.testing import check_pretext_task, task_instance


def test_rotate_all_matches_numpy_rot90() -> None:
    images = torch.rand(2, 3, 5, 5)
    rotated = rotate_all(images)
    for k in range(4):
        expected = np.rot90(images.numpy(), k, axes=(2, 3))
        assert np.array_equal(rotated[:, k].numpy(), expected)


def test_all_rotations_mode_labels_every_view_by_its_angle() -> None:
    task = task_instance(RotationTask)
    images = torch.rand(3, 3, 16, 16)
    batch = task.pseudo_labels(images, BatchRandom(0, 0, "rotation", 3))
    assert batch.views == 4 and batch.targets.tolist() == [0, 1, 2, 3] * 3
    for index, label in enumerate(batch.targets.tolist()):
        expected = torch.rot90(normalize(images[index // 4 : index // 4 + 1]), label, dims=(2, 3))[0]
        assert torch.allclose(batch.inputs[index], expected)


def test_one_random_rotation_per_image_mode() -> None:
    task = task_instance(RotationTask, all_rotations=False)
    images = torch.rand(64, 3, 8, 8)
    batch = task.pseudo_labels(images, BatchRandom(0, 0, "rotation", 64))
    assert batch.views == 1 and batch.inputs.shape == (64, 3, 8, 8)
    assert set(batch.targets.tolist()) == {0, 1, 2, 3}
    for index, label in enumerate(batch.targets.tolist()):
        assert torch.allclose(batch.inputs[index], torch.rot90(normalize(images[index : index + 1]), label, (2, 3))[0])


def test_conformance() -> None:
    check_pretext_task(RotationTask)
    check_pretext_task(RotationTask, settings={"all_rotations": False})
