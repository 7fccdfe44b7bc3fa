"""Tissue detection on a slide's low-resolution view (pure xp functions: numpy or cupy)."""

from __future__ import annotations

from typing import Any

import numpy as np

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

    Parameters
    ----------
    rgb : array
        RGB uint8 view, H×W×3 (numpy or cupy); channels past the third are ignored.
    min_od : float, optional
        Summed optical density above which a pixel may be tissue.
    closing_px : int, optional
        Side of the square the mask is closed with, in view pixels; 1 or less: no closing (and
        no hole filling).
    min_size_px : int, optional
        Smallest component kept, in view pixels.

    Returns
    -------
    array
        Bool mask of shape H×W, same array module as ``rgb``.
    """
    xp, ndi = array_module(rgb), ndimage_module(rgb)
    od = optical_density(rgb[..., :3])
    # channel by channel: the same values as reductions over the last axis, without their cost
    total = od[..., 0] + od[..., 1] + od[..., 2]
    r, g, b = (rgb[..., k].astype(xp.int16) for k in range(3))
    chroma = xp.maximum(xp.maximum(r, g), b) - xp.minimum(xp.minimum(r, g), b)
    darkest = xp.minimum(xp.minimum(od[..., 0], od[..., 1]), od[..., 2])
    mask = (total > min_od) & (chroma >= TISSUE_MIN_CHROMA) & ~(darkest > TISSUE_MAX_OD)
    if closing_px == 3 and xp is np:
        mask = ndi.binary_fill_holes(_close_square3(mask))
    elif closing_px > 1:
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


def _close_square3(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_closing(mask, structure=np.ones((3, 3), bool), border_value=0)``: a 3×3
    dilation then a 3×3 erosion, each as a row pass and a column pass (the square is the sum of a
    row and a column of three), outside the image False.

    >>> m = np.zeros((5, 6), bool); m[1:4, 1:3] = m[1:4, 4] = True
    >>> _close_square3(m).astype(int)
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0, 0]])
    """
    wide = mask.copy()
    wide[:, 1:] |= mask[:, :-1]
    wide[:, :-1] |= mask[:, 1:]
    grown = wide.copy()
    grown[1:] |= wide[:-1]
    grown[:-1] |= wide[1:]
    narrow = grown.copy()
    narrow[:, 1:] &= grown[:, :-1]
    narrow[:, :-1] &= grown[:, 1:]
    narrow[:, [0, -1]] = False
    closed = narrow.copy()
    closed[1:] &= narrow[:-1]
    closed[:-1] &= narrow[1:]
    closed[[0, -1]] = False
    return closed
