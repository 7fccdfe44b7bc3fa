"""Slide artifacts on the low-resolution view: marker ink and tissue folds.

Pathologists circle regions with green, blue, black or red markers; H&E itself is pink
(eosin) and purple (haematoxylin), so ink is told apart by hue, saturation and darkness; a fold
(tissue lying on itself) is darker and more saturated than any single layer. Each check is a
pure function of an RGB array (after HistoQC's ``functional`` modules); small specks are
ignored, so single dark nuclei or red blood cells do not count: an artifact is a region.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.ndimage as ndi

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
    v = np.maximum(np.maximum(r, g), b)  # channel by channel: the values of x.max(axis=-1), cheaper
    c = v - np.minimum(np.minimum(r, g), b)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    return _hue(r, g, b, v, c), s, v


def _hue(r: np.ndarray, g: np.ndarray, b: np.ndarray, v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Hue in degrees of float32 RGB in [0, 1] with value ``v`` and chroma ``c`` (float32)."""
    safe = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    return np.where(c > 0, (60.0 * h) % 360.0, 0.0)


def _hue_in(h: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if lo < 0:
        return (h >= lo % 360.0) | (h <= hi)
    return (h >= lo) & (h <= hi)


# The hue (as computed by ``_hue`` in float32) by the channel holding the maximum, tested in the
# order of ``_hue``: red (also every grey pixel: hue 0), else green, else blue. Within a branch
# |numerator| <= chroma holds after rounding too (rounding is monotonic), so the hue stays in
# these closed intervals.
_BRANCH_HUES = (((0.0, 60.0), (300.0, 360.0)), ((60.0, 180.0),), ((180.0, 300.0),))
_BRANCH_CODES = (0, 1, 3)  # key bits 16-17: red max; green max (not red); blue max (neither)


def _hue_reaches(kind: str, branch: int) -> bool:
    lo, hi = INK_RULES[kind][0]
    ranges = ((lo % 360.0, 360.0), (0.0, hi)) if lo < 0 else ((lo, hi),)
    return any(a <= d and c <= b for a, b in ranges for c, d in _BRANCH_HUES[branch])


@functools.cache
def _rule_table() -> np.ndarray:
    """Bit ``k`` of entry ``branch code << 16 | max << 8 | min`` (uint8 channel maximum and
    minimum): the saturation and value rules of kind ``k`` pass (saturation and value depend on
    the maximum and minimum alone: evaluated here with ``rgb_to_hsv`` itself, on one pixel per
    pair) and its hue range meets the branch's hue interval."""
    hi, lo = np.divmod(np.arange(65536), 256)
    pixels = np.stack([hi, lo, lo], axis=-1).astype(np.uint8)[None]
    _, s, v = rgb_to_hsv(pixels)
    s, v, valid = s[0], v[0], hi >= lo
    table = np.zeros(4 << 16, dtype=np.uint8)
    for k, (kind, (_, (s0, s1), (v0, v1))) in enumerate(INK_RULES.items()):
        passes = valid & (s >= s0) & (s <= s1) & (v >= v0) & (v <= v1)
        for branch, code in enumerate(_BRANCH_CODES):
            if _hue_reaches(kind, branch):
                table[code << 16 : (code + 1) << 16] |= passes.astype(np.uint8) << k
    return table


def _open_cross(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(mask, iterations=1)`` (the 3×3 cross, outside the image False)."""
    eroded = mask.copy()
    eroded[1:] &= mask[:-1]
    eroded[:-1] &= mask[1:]
    eroded[:, 1:] &= mask[:, :-1]
    eroded[:, :-1] &= mask[:, 1:]
    eroded[[0, -1]] = False
    eroded[:, [0, -1]] = False
    return _dilate_cross(eroded)


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_dilation(mask, iterations=1)`` (the 3×3 cross, outside the image False)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _regions(shape: tuple[int, int], pixels: np.ndarray, min_region_px: int) -> np.ndarray:
    """The mask of the flat indices ``pixels`` (not empty), opened, regions of ``min_region_px``
    pixels or more kept, dilated; worked on the box of the pixels with a margin of 2 (the
    opening, the labels and the dilation reach 1 pixel: nothing outside the box changes)."""
    rows, cols = np.divmod(pixels, shape[1])
    r0, c0 = max(int(rows.min()) - 2, 0), max(int(cols.min()) - 2, 0)
    r1, c1 = min(int(rows.max()) + 3, shape[0]), min(int(cols.max()) + 3, shape[1])
    box = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    box[rows - r0, cols - c0] = True
    labels, n = ndi.label(_open_cross(box))
    out = np.zeros(shape, dtype=bool)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_region_px
        keep[0] = False
        out[r0:r1, c0:c1] = _dilate_cross(keep[labels])
    return out


def artifact_masks(rgb: np.ndarray, min_region_px: int = 16) -> dict[str, np.ndarray]:
    """One boolean mask per kind of artifact (``ARTIFACT_KINDS``), regions of at least
    ``min_region_px`` pixels only, slightly dilated to cover their edges.

    The saturation and value rules and the channel holding the maximum are looked up per pixel in
    uint8 (``_rule_table``); the float32 hue is computed only where some kind can still pass, and
    the regions only of the kinds found (most slides have no ink).

    >>> img = np.full((40, 40, 3), 235, np.uint8); img[5:25, 5:25] = (40, 150, 60)  # a green stroke
    >>> {k: int(m.sum()) for k, m in artifact_masks(img).items() if m.any()}
    {'green_ink': 472}
    """
    if rgb.dtype != np.uint8:  # not a view as read: every pixel's HSV
        h, s, v = rgb_to_hsv(rgb)
        out = {}
        for kind, ((h0, h1), (s0, s1), (v0, v1)) in INK_RULES.items():
            pixels = np.flatnonzero(_hue_in(h, h0, h1) & (s >= s0) & (s <= s1) & (v >= v0) & (v <= v1))
            out[kind] = _regions(h.shape, pixels, min_region_px) if pixels.size else np.zeros(h.shape, dtype=bool)
        return out
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    not_r = r != hi
    key = hi.astype(np.uint32)
    key <<= 8
    key |= lo
    key |= not_r.astype(np.uint32) << 16
    key |= (not_r & (g != hi)).astype(np.uint32) << 17
    bits = _rule_table().take(key)
    where = np.flatnonzero(bits)
    bits = bits.reshape(-1)[where]
    if where.size:
        x = rgb.reshape(-1, rgb.shape[-1])[where, :3].astype(np.float32) / 255.0
        rs, gs, bs = x[:, 0], x[:, 1], x[:, 2]
        v = np.maximum(np.maximum(rs, gs), bs)
        h = _hue(rs, gs, bs, v, v - np.minimum(np.minimum(rs, gs), bs))
    out = {}
    for k, (kind, ((h0, h1), _, _)) in enumerate(INK_RULES.items()):
        passes = (bits & (1 << k)) != 0
        if passes.any():
            passes &= _hue_in(h, h0, h1)
        out[kind] = (
            _regions(rgb.shape[:2], where[passes], min_region_px)
            if passes.any()
            else np.zeros(rgb.shape[:2], dtype=bool)
        )
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
    if masks and not any(m.any() for m in masks.values()):  # no artifacts (most slides): none on the tissue
        return {kind: np.zeros(m.shape, dtype=bool) for kind, m in masks.items()}
    union = tissue | artifact_mask(masks)
    labels, n = ndi.label(union)
    holds_tissue = np.bincount(labels[tissue], minlength=n + 1) > 0
    holds_tissue[0] = False
    on = holds_tissue[labels]
    return {kind: m & on for kind, m in masks.items()}
