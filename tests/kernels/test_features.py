"""Nucleus features (pipeline.kernels.features): moments against scikit-image's regionprops, an
outline that encloses its nucleus."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from pipeline.kernels.features import nucleus_moments, nucleus_outlines, polygon_perimeter


def test_moments_match_regionprops() -> None:
    labels = np.zeros((40, 40), dtype=np.int32)
    yy, xx = np.mgrid[:40, :40]
    labels[((yy - 12) / 6) ** 2 + ((xx - 15) / 10) ** 2 <= 1] = 1
    labels[30:36, 5:30] = 2
    intensity = (xx + yy).astype(np.float32)
    m = nucleus_moments(labels, intensity)
    for i, rp in enumerate(regionprops(labels, intensity_image=intensity)):
        assert m["area"][i] == rp.area
        assert m["row"][i] == pytest.approx(rp.centroid[0])
        assert m["col"][i] == pytest.approx(rp.centroid[1])
        assert m["mean_intensity"][i] == pytest.approx(rp.intensity_mean)
        assert m["eccentricity"][i] == pytest.approx(rp.eccentricity, abs=0.02)


def test_outline_encloses_the_nucleus() -> None:
    from skimage.draw import polygon as fill_polygon

    labels = np.zeros((50, 50), dtype=np.int32)
    yy, xx = np.mgrid[:50, :50]
    labels[np.hypot(yy - 25, xx - 22) <= 9] = 1
    (ring,) = nucleus_outlines(labels, np.array([1]))
    rr, cc = fill_polygon(ring[:, 0], ring[:, 1], labels.shape)
    redrawn = np.zeros_like(labels)
    redrawn[rr, cc] = 1
    inter = (redrawn & labels).sum()
    assert inter / (redrawn | labels).sum() > 0.9
    assert polygon_perimeter(ring) == pytest.approx(2 * np.pi * 9, rel=0.12)
