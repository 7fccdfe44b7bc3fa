"""Stain normalisation (pipeline.kernels.stain): Reinhard and Macenko on tiny generated images,
the fused float32 forms against their step-by-step definitions."""

from __future__ import annotations

import numpy as np

from pipeline.kernels.stain import (
    MACENKO_TARGET,
    REINHARD_TARGET,
    add_per_channel,
    haematoxylin,
    macenko_normalise,
    macenko_stains,
    reinhard_normalise,
    reinhard_stats,
)


def test_reinhard_maps_slide_statistics_onto_the_target() -> None:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((180, 120, 170), 25, size=(64, 64, 3)), 0, 255).astype(np.uint8)
    out = (reinhard_normalise(img, reinhard_stats(img)) * 255).round().astype(np.uint8)
    after = reinhard_stats(out)
    np.testing.assert_allclose(after.mean, REINHARD_TARGET.mean, atol=0.05)


def test_macenko_identity_and_haematoxylin_ordering() -> None:
    # an image made of two stains: Macenko recovers them, so normalising to itself is identity
    rng = np.random.default_rng(0)
    vectors = np.array(MACENKO_TARGET.vectors)
    conc = rng.gamma(2.0, 0.3, size=(64 * 64, 2))
    img = (255 * np.exp(-conc @ vectors)).reshape(64, 64, 3).clip(1, 255).astype(np.uint8)
    stains = macenko_stains(img)
    assert np.abs(np.array(stains.vectors) - vectors).max() < 0.1
    same = macenko_normalise(img, stains, stains)
    assert np.abs(same * 255 - img).mean() < 3
    purple = np.array([[[90, 60, 140]]], dtype=np.uint8)
    pink = np.array([[[235, 175, 205]]], dtype=np.uint8)
    assert haematoxylin(purple)[0, 0] > haematoxylin(pink)[0, 0]


def test_fused_reinhard_equals_the_step_by_step_definition() -> None:
    """The one-pass float32 normalisation against the definition (lαβ, shift, back) within
    float32 rounding, for uint8 and [0, 1] float input."""
    from pipeline.kernels.stain import StainStats, lab_reinhard_to_rgb, rgb_to_lab_reinhard

    rng = np.random.default_rng(1)
    img = np.clip(rng.normal((170, 110, 160), 40, size=(96, 80, 3)), 0, 255).astype(np.uint8)
    img[:10] = 255  # glass
    img[10:12] = 0  # black
    source = StainStats(mean=(-0.4, -0.07, 0.03), std=(0.25, 0.05, 0.02))
    for x in (img, img.astype(np.float32) / 255.0):
        lab = rgb_to_lab_reinhard(x)
        m, s = np.asarray(source.mean, np.float32), np.asarray(source.std, np.float32)
        tm, ts = np.asarray(REINHARD_TARGET.mean, np.float32), np.asarray(REINHARD_TARGET.std, np.float32)
        expected = lab_reinhard_to_rgb((lab - m) * (ts / s) + tm)
        got = reinhard_normalise(x, source)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_per_channel_offset_is_numpys_broadcast_add() -> None:
    """The blocked add used by the Reinhard normalisation gives the broadcast add's floats."""
    rng = np.random.default_rng(4)
    offset = rng.normal(size=3).astype(np.float32)
    for shape in ((1401, 1408, 3), (7, 3), (255, 3), (0, 3)):
        x = rng.normal(size=shape).astype(np.float32)
        expected = x + offset
        add_per_channel(x, offset)
        np.testing.assert_array_equal(x, expected)


def test_haematoxylin_column_equals_full_deconvolution() -> None:
    from pipeline.kernels.stain import _HED_FROM_RGB, haematoxylin, optical_density

    rng = np.random.default_rng(2)
    x = rng.random((64, 48, 3)).astype(np.float32)
    full = np.maximum((optical_density(x) @ np.asarray(_HED_FROM_RGB, dtype=np.float32))[..., 0], 0.0)
    # The same float32 products summed by another routine (a matrix-vector product against one
    # column of a matrix product): equal up to float32 rounding, a few units in the last place of
    # optical densities of order 1, whatever BLAS numpy brings.
    np.testing.assert_allclose(haematoxylin(x), full, rtol=4 * np.finfo(np.float32).eps, atol=1e-6)
