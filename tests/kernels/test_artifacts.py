"""The tissue-view kernels (artifact masks, Reinhard statistics) give exactly what their plain
definitions give (written out below: a float32 HSV image, per kind a threshold, scipy's opening,
a size filter and scipy's dilation over the whole view; numpy's mean and std of the selected lαβ
rows): the same masks, the same ``StainStats`` floats, on views with ink of each colour, a fold,
none, and on bare glass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from pipeline.kernels.artifacts import (
    _BRANCH_CODES,
    INK_RULES,
    _dilate_cross,
    _hue,
    _hue_in,
    _open_cross,
    _rule_table,
    artifact_mask,
    artifact_masks,
    artifacts_on_tissue,
    rgb_to_hsv,
)
from pipeline.kernels.stain import StainStats, reinhard_stats, rgb_to_lab_reinhard
from pipeline.kernels.tissue import _close_square3, tissue_mask
from pipeline.testing import synthetic_slide_image

INKS = {"green": (40, 140, 80), "blue": (40, 60, 170), "black": (25, 25, 30), "red": (200, 20, 35)}
SIDE = 320


def stroke(shape: tuple[int, int], seed: int, width: float = 14.0) -> np.ndarray:
    """A slanted band across the view (as ``benchmarks/ink_mask.py`` paints marker)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    y0, y1 = np.random.default_rng(seed).uniform(0.2, 0.8, 2) * h
    return np.abs((y1 - y0) * xx - w * (yy - y0)) / np.hypot(y1 - y0, w) < width / 2


def inked(img: np.ndarray, colours: list[str]) -> np.ndarray:
    out = img.copy()
    for k, name in enumerate(colours):
        band = stroke(img.shape[:2], k)
        out[band] = (0.15 * img[band] + 0.85 * np.array(INKS[name])).astype(np.uint8)
    return out


def views() -> dict[str, np.ndarray]:
    disc, _ = synthetic_slide_image(SIDE, SIDE, seed=3, spacing=20)
    full, _ = synthetic_slide_image(SIDE, SIDE, seed=4, tissue="full", spacing=20)
    rng = np.random.default_rng(5)
    glass = np.clip(rng.normal(242, 3, size=(SIDE, SIDE + 16, 3)), 0, 255).astype(np.uint8)
    fold = full.copy()
    fold[60:140, 90:200] = np.clip(rng.normal((45, 12, 62), 3, size=(80, 110, 3)), 0, 255).astype(np.uint8)
    out = {"no ink": disc, "full tissue": full, "glass": glass, "fold": fold}
    out.update({f"{name} ink": inked(disc, [name]) for name in INKS})
    out["four inks"] = inked(full, list(INKS))
    out["random colours"] = rng.integers(0, 256, size=(96, 80, 3), dtype=np.uint8)
    return out


VIEWS = views()


def plain_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value of RGB, in float32 from values scaled to [0, 1]."""
    x = rgb[..., :3].astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    c = v - x.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    return np.where(c > 0, (60.0 * h) % 360.0, 0.0), s, v


def plain_artifact_masks(rgb: np.ndarray, min_region_px: int = 16) -> dict[str, np.ndarray]:
    """Per kind: the HSV thresholds, a 3×3-cross opening, regions of ``min_region_px`` or more, a
    3×3-cross dilation."""
    h, s, v = plain_hsv(rgb)
    out = {}
    for kind, ((h0, h1), (s0, s1), (v0, v1)) in INK_RULES.items():
        mask = ndi.binary_opening(_hue_in(h, h0, h1) & (s >= s0) & (s <= s1) & (v >= v0) & (v <= v1))
        labels, n = ndi.label(mask)
        if n:
            keep = np.bincount(labels.ravel()) >= min_region_px
            keep[0] = False
            mask = ndi.binary_dilation(keep[labels])
        out[kind] = mask
    return out


def plain_reinhard_stats(rgb: np.ndarray, tissue: np.ndarray | None) -> StainStats:
    """numpy's mean and std of the lαβ rows of the tissue (all rows when under 100 are selected)."""
    lab = rgb_to_lab_reinhard(rgb).reshape(-1, 3)
    if tissue is not None and int(tissue.sum()) >= 100:
        lab = lab[tissue.reshape(-1)]
    mean, std = lab.mean(axis=0).astype(np.float64), lab.std(axis=0).astype(np.float64)
    return StainStats(mean=tuple(float(m) for m in mean), std=tuple(max(float(v), 1e-4) for v in std))


@pytest.mark.parametrize("name", list(VIEWS))
def test_artifact_masks_are_their_definition(name: str) -> None:
    view = VIEWS[name]
    for min_px in (4, 16, 40):
        old, new = plain_artifact_masks(view, min_px), artifact_masks(view, min_px)
        assert list(new) == list(old)
        for kind in old:
            assert new[kind].dtype == old[kind].dtype and new[kind].shape == old[kind].shape
            assert np.array_equal(new[kind], old[kind]), (name, min_px, kind)
    painted = {"fold": ["fold"], "four inks": [f"{c}_ink" for c in INKS]}.get(name, [])
    painted += [name.replace(" ", "_")] if name.split()[0] in INKS else []
    assert all(new[kind].any() for kind in painted)  # the painted artifacts are found
    h, s, v = rgb_to_hsv(view)
    for a, b in zip((h, s, v), plain_hsv(view), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("name", list(VIEWS))
def test_stain_statistics_and_artifacts_on_tissue_are_their_definition(name: str) -> None:
    view = VIEWS[name]
    tissue = tissue_mask(view)
    masks = artifact_masks(view)
    clean = tissue & ~artifact_mask(masks)
    few = np.zeros_like(tissue)
    few.reshape(-1)[:50] = True  # under 100 pixels: the whole view's statistics
    for sel in (clean, tissue, None, few):
        assert reinhard_stats(view, sel) == plain_reinhard_stats(view, sel)  # the same floats, bit for bit
    # an artifact is on tissue when its connected region of tissue and artifacts holds tissue
    labels, n = ndi.label(tissue | artifact_mask(masks))
    holds = np.bincount(labels[tissue], minlength=n + 1) > 0
    holds[0] = False
    on = artifacts_on_tissue(masks, tissue)
    assert list(on) == list(masks) and all(np.array_equal(on[k], masks[k] & holds[labels]) for k in on)


def test_rgba_int16_and_float_views() -> None:
    view = VIEWS["four inks"]
    rgba = np.concatenate([view, np.full(view.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    old, new = plain_artifact_masks(rgba), artifact_masks(rgba)
    assert all(np.array_equal(new[k], old[k]) for k in old)
    assert np.array_equal(tissue_mask(rgba), tissue_mask(view))
    wide = view.astype(np.int16)  # not uint8: the HSV of every pixel, the same masks
    old, new = plain_artifact_masks(wide), artifact_masks(wide)
    assert all(np.array_equal(new[k], old[k]) for k in old) and new["red_ink"].any()
    x = view.astype(np.float32) / 255.0
    assert np.array_equal(rgb_to_lab_reinhard(x), rgb_to_lab_reinhard(view))  # [0, 1] floats as uint8
    assert reinhard_stats(x) == plain_reinhard_stats(x, None)


def test_rules_on_every_colour() -> None:
    """Every one of the 2^24 RGB colours: the rule table and the hue of the candidate pixels say
    what the float32 HSV thresholds said, for every kind."""
    g, b = np.divmod(np.arange(1 << 16), 256)
    for r0 in range(0, 256, 16):
        r = np.repeat(np.arange(r0, r0 + 16), 1 << 16)
        rgb = np.stack([r, np.tile(g, 16), np.tile(b, 16)], axis=-1).astype(np.uint8)[None]
        h, s, v = plain_hsv(rgb)
        hi, lo = rgb[0].max(axis=1), rgb[0].min(axis=1)
        code = np.select([rgb[0, :, 0] == hi, rgb[0, :, 1] == hi], _BRANCH_CODES[:2], _BRANCH_CODES[2])
        bits = _rule_table()[code.astype(np.uint32) << 16 | hi.astype(np.uint32) << 8 | lo]
        x = rgb[0].astype(np.float32) / 255.0
        top = np.maximum(np.maximum(x[:, 0], x[:, 1]), x[:, 2])
        hue = _hue(x[:, 0], x[:, 1], x[:, 2], top, top - np.minimum(np.minimum(x[:, 0], x[:, 1]), x[:, 2]))
        assert np.array_equal(hue, h[0])
        for k, ((h0, h1), (s0, s1), (v0, v1)) in enumerate(INK_RULES.values()):
            old = _hue_in(h, h0, h1) & (s >= s0) & (s <= s1) & (v >= v0) & (v <= v1)
            assert np.array_equal(((bits & (1 << k)) != 0) & _hue_in(hue, h0, h1), old[0])


def test_morphology_is_scipys() -> None:
    rng = np.random.default_rng(0)
    square = np.ones((3, 3), bool)
    for shape in [(1, 1), (1, 6), (6, 1), (2, 2), (3, 3), (7, 9), (61, 47)]:
        for p in (0.1, 0.5, 0.8, 0.95):
            m = rng.random(shape) < p
            assert np.array_equal(_open_cross(m), ndi.binary_opening(m, iterations=1))
            assert np.array_equal(_dilate_cross(m), ndi.binary_dilation(m, iterations=1))
            assert np.array_equal(_close_square3(m), ndi.binary_closing(m, structure=square, border_value=0))


def test_regions_touching_the_view_edges() -> None:
    view = np.full((50, 60, 3), 240, np.uint8)
    view[:12, :9] = view[-7:, -20:] = view[20:30, -4:] = INKS["blue"]
    view[30:50, :2] = INKS["green"]  # two pixels wide: opened away
    old, new = plain_artifact_masks(view, 4), artifact_masks(view, 4)
    assert all(np.array_equal(new[k], old[k]) for k in old) and new["blue_ink"].any()
