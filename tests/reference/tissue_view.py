"""The previous tissue-view kernels, verbatim: the HSV conversion and artifact masks
(``pipeline.kernels.artifacts``: a float32 HSV image, then per kind a threshold, a scipy opening,
labels, a size filter and a dilation over the whole view), the tissue mask (scipy's 3×3 closing)
and the Reinhard statistics (numpy's mean and std of the selected lαβ rows); the references that
``tests/test_artifacts.py`` and ``benchmarks/tissue_view.py`` compare the current kernels with."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage as ndi

from pipeline.kernels.dispatch import array_module, ndimage_module, to_host
from pipeline.kernels.stain import _LMS2LAB, _RGB2LMS, StainStats, optical_density

# Hue in degrees, saturation and value in [0, 1] (HSV). Haematoxylin sits at hue ~260–290°
# (S 0.4–0.6), eosin at ~320–345° (S 0.2–0.6); glass is bright and grey.
INK_RULES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    # kind: ((hue from, hue to), (saturation from, to), (value from, to))
    "green_ink": ((70.0, 185.0), (0.20, 1.0), (0.0, 0.92)),
    "blue_ink": ((190.0, 245.0), (0.35, 1.0), (0.0, 0.92)),
    "red_ink": ((-12.0, 18.0), (0.70, 1.0), (0.25, 1.0)),
    "black_ink": ((0.0, 360.0), (0.0, 0.40), (0.0, 0.26)),  # dark and grey: haematoxylin is dark but purple
    "fold": ((250.0, 320.0), (0.60, 1.0), (0.0, 0.25)),
}
ARTIFACT_KINDS = tuple(INK_RULES)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees, [0, 360)), saturation and value of uint8 RGB.

    >>> h, s, v = rgb_to_hsv(np.array([[[0, 200, 0], [92, 60, 140]]], np.uint8))
    >>> [round(float(x)) for x in h[0]], [round(float(x), 2) for x in s[0]]
    ([120, 264], [1.0, 0.57])
    """
    x = rgb[..., :3].astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    c = v - x.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(c > 0, (60.0 * h) % 360.0, 0.0)
    return h, s, v


def _hue_in(h: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if lo < 0:
        return (h >= lo % 360.0) | (h <= hi)
    return (h >= lo) & (h <= hi)


def artifact_masks(rgb: np.ndarray, min_region_px: int = 16) -> dict[str, np.ndarray]:
    """One boolean mask per kind of artifact (``ARTIFACT_KINDS``), regions of at least
    ``min_region_px`` pixels only, slightly dilated to cover their edges.

    >>> img = np.full((40, 40, 3), 235, np.uint8); img[5:25, 5:25] = (40, 150, 60)  # a green stroke
    >>> {k: int(m.sum()) for k, m in artifact_masks(img).items() if m.any()}
    {'green_ink': 472}
    """
    h, s, v = rgb_to_hsv(rgb)
    out = {}
    for kind, ((h0, h1), (s0, s1), (v0, v1)) in INK_RULES.items():
        mask = _hue_in(h, h0, h1) & (s >= s0) & (s <= s1) & (v >= v0) & (v <= v1)
        mask = ndi.binary_opening(mask, iterations=1)
        labels, n = ndi.label(mask)
        if n:
            sizes = np.bincount(labels.ravel())
            keep = sizes >= min_region_px
            keep[0] = False
            mask = keep[labels]
            mask = ndi.binary_dilation(mask, iterations=1)
        out[kind] = mask
    return out


def artifact_mask(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Union of the kinds' masks (pixels excluded from segmentation)."""
    union = np.zeros(next(iter(masks.values())).shape, dtype=bool)
    for m in masks.values():
        union |= m
    return union


def artifacts_on_tissue(masks: dict[str, np.ndarray], tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Each kind's pixels that lie on a piece of tissue: in a connected region of tissue and
    artifacts together that holds tissue (dark ink is not tissue itself, being grey, but a stroke
    across a section is on it; marks on bare glass are not).

    >>> tissue = np.zeros((5, 9), bool); tissue[:, :3] = tissue[:, 4:6] = True
    >>> ink = np.zeros((5, 9), bool); ink[:, 3] = ink[:, 8] = True  # across the tissue; on glass
    >>> int(artifacts_on_tissue({"black_ink": ink}, tissue)["black_ink"].sum())
    5
    """
    union = tissue | artifact_mask(masks)
    labels, n = ndi.label(union)
    holds_tissue = np.bincount(labels[tissue], minlength=n + 1) > 0
    holds_tissue[0] = False
    on = holds_tissue[labels]
    return {kind: m & on for kind, m in masks.items()}


# Optical density above which a pixel counts as stained (glass is ~0.02-0.06; pale eosin ~0.15).
TISSUE_MIN_OD = 0.12
# Glass is grey: stained tissue differs from grey by at least this much chroma (max − min of the
# RGB channels, 0–255 scale), measured on the fixture slides' backgrounds (chroma ≤ 8).
TISSUE_MIN_CHROMA = 15
# Very dark pixels (pen ink, folds, black scanner borders) are not tissue: OD of all channels > 2.0.
TISSUE_MAX_OD = 2.0


def tissue_mask(rgb: Any, min_od: float = TISSUE_MIN_OD, closing_px: int = 3, min_size_px: int = 16) -> Any:
    """Boolean tissue mask of a low-resolution RGB view (uint8 H×W×3).

    A pixel is tissue when its summed optical density exceeds ``min_od``, it has the chroma of
    a stain (glass is grey) and it is not near-black; the mask is closed with a ``closing_px``
    square and specks smaller than ``min_size_px`` low-resolution pixels are dropped.
    """
    xp, ndi = array_module(rgb), ndimage_module(rgb)
    od = optical_density(rgb[..., :3])
    # channel by channel: the same values as reductions over the last axis, without their cost
    total = od[..., 0] + od[..., 1] + od[..., 2]
    r, g, b = (rgb[..., k].astype(xp.int16) for k in range(3))
    chroma = xp.maximum(xp.maximum(r, g), b) - xp.minimum(xp.minimum(r, g), b)
    darkest = xp.minimum(xp.minimum(od[..., 0], od[..., 1]), od[..., 2])
    mask = (total > min_od) & (chroma >= TISSUE_MIN_CHROMA) & ~(darkest > TISSUE_MAX_OD)
    if closing_px > 1:
        structure = xp.ones((closing_px, closing_px), dtype=bool)
        mask = ndi.binary_closing(mask, structure=structure, border_value=0)
        mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = xp.bincount(labels.ravel())
    keep = sizes >= min_size_px
    keep[0] = False
    return keep[labels]


def rgb_to_lab_reinhard(rgb: Any) -> Any:
    """uint8 or [0, 1] float RGB (…×3) → Reinhard lαβ (float32)."""
    xp = array_module(rgb)
    x = rgb.astype(xp.float32)
    if rgb.dtype == np.uint8:
        x = x / 255.0
    lms = x @ xp.asarray(_RGB2LMS.T, dtype=xp.float32)
    lms = xp.log10(xp.maximum(lms, 1.0 / 255.0))
    return lms @ xp.asarray(_LMS2LAB.T, dtype=xp.float32)


def reinhard_stats(rgb: Any, tissue: Any | None = None) -> StainStats:
    """lαβ statistics over the tissue pixels of an RGB image (the slide's low-resolution view)."""
    xp = array_module(rgb)
    lab = rgb_to_lab_reinhard(rgb).reshape(-1, 3)
    if tissue is not None:
        sel = tissue.reshape(-1)
        if int(sel.sum()) >= 100:
            lab = lab[sel]
    mean = to_host(xp.asarray(lab.mean(axis=0), dtype=xp.float64))  # one small copy off the device
    std = to_host(xp.asarray(lab.std(axis=0), dtype=xp.float64))
    m = [float(v) for v in mean]
    s = [max(float(v), 1e-4) for v in std]
    return StainStats(mean=(m[0], m[1], m[2]), std=(s[0], s[1], s[2]))
