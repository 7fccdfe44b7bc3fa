"""The synthetic-nucleus generator: what is drawn is exactly what the masks say."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.training.synthetic import (
    SyntheticConfig,
    inpaint_background,
    paint_nuclei,
    place_polygons,
    random_polygon,
    synthetic_patch,
)
from pipeline.training.targets import augment_patch, hed_jitter, training_targets

CFG = SyntheticConfig(size=96, nuclei_per_patch=(8, 20))


def fake_tile(size: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A pink 'tissue' image with a few dark purple disc nuclei and their labels."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((size, size, 3), dtype=np.float32)
    rgb[...] = (0.93, 0.70, 0.82)
    rgb += rng.normal(0, 0.01, rgb.shape).astype(np.float32)
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k, (cy, cx) in enumerate(rng.uniform(15, size - 15, (12, 2)), start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        labels[disc] = k
        rgb[disc] = (0.35, 0.25, 0.55)
    return np.clip(rgb, 0, 1), labels


def test_random_polygon_follows_the_paper():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = random_polygon(rng)
        assert 10 <= len(p) <= 17
        r = np.hypot(p[:, 0], p[:, 1])
        assert r.max() <= 13.0 * 1.08 + 1e-9
        assert r.max() >= 8.5 * 0.9 - 1e-9


def test_placed_polygons_never_touch():
    labels = place_polygons(np.random.default_rng(2), (128, 128), 60, CFG)
    n = labels.max()
    assert n >= 20
    assert set(np.unique(labels)) == set(range(n + 1))
    for k in range(1, n + 1):
        obj = labels == k
        assert ndi.label(obj)[1] == 1  # one connected piece per nucleus
        ring = ndi.binary_dilation(obj, structure=np.ones((3, 3))) & ~obj
        assert set(np.unique(labels[ring])) <= {0}  # ≥ 1 px of background around each


def test_painted_pixels_are_exactly_the_masks():
    rng = np.random.default_rng(3)
    background = np.full((96, 96, 3), (0.9, 0.75, 0.85), dtype=np.float32)
    labels = place_polygons(rng, (96, 96), 15, CFG)
    od_mean, od_std = np.array([0.6, 0.7, 0.3]), np.array([0.1, 0.1, 0.05])
    image = paint_nuclei(background, labels, od_mean, od_std, rng, CFG)
    od_change = -np.log(image) + np.log(background)
    changed = np.abs(image - background).max(axis=-1) > 1e-6
    near = ndi.distance_transform_edt(labels == 0) <= 3  # the soft edge (σ 0.6 px, truncated)
    assert not (changed & ~near).any()  # nothing painted away from the masks
    core = ndi.binary_erosion(labels > 0, iterations=1)
    assert (od_change[core].sum(axis=-1) > 0.3).all()  # every masked pixel is visibly stained
    # each nucleus is one dark blob: thresholding the change recovers the masks closely
    detected = od_change.sum(axis=-1) > 0.5 * od_change[core].sum(axis=-1).min()
    iou = (detected & (labels > 0)).sum() / (detected | (labels > 0)).sum()
    assert iou > 0.85


def test_inpainting_removes_the_real_nuclei():
    rgb, labels = fake_tile()
    bg = inpaint_background(rgb, labels > 0, np.random.default_rng(0))
    od = -np.log(bg).sum(axis=-1)
    tissue_od = -np.log(rgb[labels == 0]).sum(axis=-1).mean()
    assert od[labels > 0].mean() < tissue_od + 0.2  # the dark discs are gone
    assert np.array_equal(
        bg[ndi.distance_transform_edt(labels == 0) > 3], rgb[ndi.distance_transform_edt(labels == 0) > 3]
    )


def test_synthetic_patch_labels_match_the_image():
    rgb, labels = fake_tile()
    image, synth = synthetic_patch(rgb, labels, np.random.default_rng(4), CFG)
    assert image.shape == (96, 96, 3) and image.dtype == np.float32
    assert synth.shape == (96, 96) and synth.max() >= 5
    assert 0.0 <= image.min() and image.max() <= 1.0
    od = -np.log(np.clip(image, 1 / 255, 1)).sum(axis=-1)
    inside = ndi.binary_erosion(synth > 0, iterations=1)
    far = ndi.distance_transform_edt(synth == 0) > 3
    assert od[inside].mean() > od[far].mean() + 0.5  # nuclei are where the labels are


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_targets(seed):
    labels = place_polygons(np.random.default_rng(seed), (96, 96), 25, CFG)
    t = training_targets(labels)
    assert t.shape == (2, 96, 96) and t.dtype == np.float32
    assert np.array_equal(t[1] > 0, labels > 0)
    assert not (t[0] > t[1]).any()  # centre ⊂ material
    for k in range(1, labels.max() + 1):
        assert t[0][labels == k].sum() >= 1  # every nucleus has a centre
    assert ndi.label(t[0] > 0)[1] == labels.max()  # one centre blob per nucleus


def test_touching_gap_separates_touching_nuclei_only():
    labels = np.zeros((40, 60), dtype=np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[np.hypot(yy - 20, xx - 15) <= 9] = 1
    labels[(np.hypot(yy - 20, xx - 32) <= 9) & (labels == 0)] = 2  # touches nucleus 1
    labels[np.hypot(yy - 20, xx - 52) <= 6] = 3  # alone: 1 px of background to nucleus 2
    plain, gap = training_targets(labels), training_targets(labels, touching_gap=True)
    assert np.array_equal(plain[0], gap[0])  # centres unchanged
    assert ndi.label(plain[1] > 0)[1] == 2 and ndi.label(gap[1] > 0)[1] == 3  # 1 and 2 now apart
    removed = (plain[1] > 0) & ~(gap[1] > 0)
    assert set(np.unique(labels[removed])) == {1, 2}
    # only the contact line: every removed pixel has a 4-neighbour in the other nucleus
    for r, c in zip(*np.nonzero(removed), strict=True):
        neighbours = {labels[r + dr, c + dc] for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))}
        assert (3 - labels[r, c]) in neighbours
    assert np.array_equal(gap[1][labels == 3], plain[1][labels == 3])


def test_augmentation_keeps_image_and_labels_aligned():
    rgb, labels = fake_tile()
    rng = np.random.default_rng(5)
    for _ in range(5):
        img, lab = augment_patch(rgb, labels, 64, rng)
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        if (lab > 0).sum() > 20:
            od = -np.log(np.clip(img, 1 / 255, 1)).sum(axis=-1)
            assert od[ndi.binary_erosion(lab > 0)].mean() > od[lab == 0].mean() + 0.3


def test_hed_jitter_identity_and_range():
    rgb, _ = fake_tile(32)

    class Midpoint:
        def uniform(self, a, b, n):
            return np.full(n, (a + b) / 2)

    assert np.allclose(hed_jitter(rgb, Midpoint()), np.clip(rgb, 1 / 255, 1), atol=1e-5)
    out = hed_jitter(rgb, np.random.default_rng(0))
    assert out.min() >= 0 and out.max() <= 1


def test_distance_centre_target_peaks_inside_each_nucleus_and_falls_to_zero_between():
    """The distance target: 1 at each nucleus' innermost pixels, 0 on its boundary and outside, so
    two touching nuclei meet in a valley; its cores (≥ 0.5) are the core target's."""
    labels = np.zeros((40, 60), dtype=np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[np.hypot(yy - 20, xx - 15) <= 9] = 1
    labels[(np.hypot(yy - 20, xx - 32) <= 9) & (labels == 0)] = 2  # touches nucleus 1
    dist = training_targets(labels, centre="distance")[0]
    core = training_targets(labels)[0]
    assert dist.min() == 0.0 and dist.max() == 1.0
    assert (dist[labels == 0] == 0).all()
    for k in (1, 2):
        assert dist[labels == k].max() == 1.0
    contact = labels[20, 23:26]  # the row through both centres crosses from 1 to 2 here
    assert set(contact) == {1, 2} and dist[20, 23:26].max() <= 0.25
    np.testing.assert_array_equal(dist >= 0.5, core > 0)
    with pytest.raises(ValueError, match="centre target"):
        training_targets(labels, centre="ring")
