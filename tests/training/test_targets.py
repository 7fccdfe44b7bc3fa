"""Training targets (pipeline.training.targets): the distance maps a four-output U-net learns."""

from __future__ import annotations

import numpy as np

from pipeline.training.targets import distance_maps, training_targets


def two_touching_nuclei() -> np.ndarray:
    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.int32)
    labels[np.hypot(yy - 20, xx - 20) <= 9] = 1
    labels[(np.hypot(yy - 20, xx - 36) <= 8) & (xx > 28)] = 2
    return labels


def test_distance_maps_run_from_minus_one_to_one_across_each_nucleus() -> None:
    labels = two_touching_nuclei()
    h, v = 2 * distance_maps(labels) - 1
    assert np.all(h[labels == 0] == 0) and np.all(v[labels == 0] == 0)
    for k in (1, 2):
        inside = labels == k
        assert h[inside].min() == -1 and h[inside].max() == 1
        assert v[inside].min() == -1 and v[inside].max() == 1
        rows, cols = np.nonzero(inside)
        # left of the centroid negative, right positive; above negative, below positive
        assert np.all(h[inside][cols < cols.mean() - 0.5] < 0) and np.all(h[inside][cols > cols.mean() + 0.5] > 0)
        assert np.all(v[inside][rows < rows.mean() - 0.5] < 0) and np.all(v[inside][rows > rows.mean() + 0.5] > 0)
    # where the nuclei touch on row 20 the horizontal map jumps from nucleus 1's right edge to 2's left
    row = labels[20]
    join = int(np.nonzero((row[:-1] == 1) & (row[1:] == 2))[0][0])
    assert h[20, join] > 0.8 and h[20, join + 1] < -0.8


def test_distance_maps_follow_the_patch_through_rotations_and_flips() -> None:
    """Targets are computed after the augmentation, so a rotated patch gets the rotated field:
    rotating the labels by 90° turns the vertical map into the negated horizontal one."""
    labels = two_touching_nuclei()
    h, v = 2 * distance_maps(labels) - 1
    h_rot, v_rot = 2 * distance_maps(np.rot90(labels)) - 1
    np.testing.assert_allclose(h_rot, np.rot90(v), atol=1e-6)
    np.testing.assert_allclose(v_rot, -np.rot90(h), atol=1e-6)
    h_flip, _ = 2 * distance_maps(labels[:, ::-1]) - 1
    np.testing.assert_allclose(h_flip, -h[:, ::-1], atol=1e-6)


def test_four_targets_only_when_asked() -> None:
    labels = two_touching_nuclei()
    assert training_targets(labels, centre="distance").shape == (2, 40, 60)
    four = training_targets(labels, centre="distance", distances=True)
    assert four.shape == (4, 40, 60) and four.dtype == np.float32
    np.testing.assert_array_equal(four[:2], training_targets(labels, centre="distance"))
    assert distance_maps(np.zeros((5, 5), np.int32)).tolist() == np.full((2, 5, 5), 0.5).tolist()
