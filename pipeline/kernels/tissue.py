"""Tissue detection on a slide's low-resolution view (pure xp functions: numpy or cupy)."""

from __future__ import annotations

from typing import Any

from pipeline.kernels.dispatch import array_module, ndimage_module
from pipeline.kernels.stain import optical_density

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
