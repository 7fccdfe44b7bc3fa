"""Tile geometry: the grid of cores over a slide, each read with a halo, and the mapping between
level-0 pixels and the model's resolution. Pure arithmetic, no I/O.

A nucleus belongs to the tile whose *core* holds its centroid; cores partition the slide, so
every nucleus is reported exactly once. The halo is wide enough that a nucleus whose centroid
lies in the core is whole inside the tile and far enough from the tile's edge that the
network's output for it does not depend on where the tile was cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INPUT_MULTIPLE = 16


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def derive_halo_px(context_px: int, max_nucleus_px: int) -> int:
    """Halo at model resolution: the network's context plus the largest nucleus extent,
    rounded up to the model's input multiple."""
    return round_up(context_px + max_nucleus_px, INPUT_MULTIPLE)


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``core0`` level-0 px tiling a ``width``×``height`` slide, read with ``halo0`` px
    around each. ``scale`` = level-0 px per model px (model mpp / slide mpp)."""

    width: int
    height: int
    core0: int
    halo0: int
    scale: float

    @classmethod
    def for_slide(
        cls, width: int, height: int, slide_mpp: float, model_mpp: float, tile_px: int, halo_px: int
    ) -> TileGrid:
        scale = model_mpp / slide_mpp
        # a slide smaller than one tile gets one tile of its own size, not a mostly empty one
        tile_px = min(tile_px, round_up(max(width, height) / scale, INPUT_MULTIPLE))
        core0 = max(INPUT_MULTIPLE, int(round(tile_px * scale)))
        halo0 = int(math.ceil(halo_px * scale))
        if halo0 > core0 and (core0 < width or core0 < height):
            raise ValueError(f"halo ({halo_px} px) must not exceed the tile core ({tile_px} px)")
        return cls(width=width, height=height, core0=core0, halo0=halo0, scale=scale)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.core0)

    @property
    def n_rows(self) -> int:
        return math.ceil(self.height / self.core0)

    @property
    def extent0(self) -> int:
        """Side of a tile's read window in level-0 px (core + 2 halos)."""
        return self.core0 + 2 * self.halo0

    @property
    def model_side(self) -> int:
        """Side of the resampled window at model resolution (before padding to 16)."""
        return max(1, int(round(self.extent0 / self.scale)))

    @property
    def model_input_side(self) -> int:
        return round_up(self.model_side, INPUT_MULTIPLE)

    @property
    def step(self) -> float:
        """Level-0 px per model px inside a tile (exact for this window)."""
        return self.extent0 / self.model_side

    def core(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the core in level-0 px, clipped to the slide."""
        x0, y0 = col * self.core0, row * self.core0
        return x0, y0, min(x0 + self.core0, self.width), min(y0 + self.core0, self.height)

    def window_origin(self, row: int, col: int) -> tuple[int, int]:
        """Level-0 (x, y) of the read window's top-left pixel (may be negative: the image is mirrored there)."""
        return col * self.core0 - self.halo0, row * self.core0 - self.halo0

    def to_level0(self, row: int, col: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-resolution (row, col) positions in a tile's window → level-0 (x, y).
        Pixel centres: model pixel j spans [j·step, (j+1)·step) of the window."""
        ox, oy = self.window_origin(row, col)
        s = self.step
        return ox + (np.asarray(cols) + 0.5) * s - 0.5, oy + (np.asarray(rows) + 0.5) * s - 0.5

    def inside_slide(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Which model-resolution rows and columns of a tile's window have their centre on the
        slide (the rest is the mirrored continuation the window was read with)."""
        centres = (np.arange(self.model_side) + 0.5) * self.step - 0.5
        ox, oy = self.window_origin(row, col)
        ys, xs = oy + centres, ox + centres
        return (ys >= -0.5) & (ys < self.height - 0.5), (xs >= -0.5) & (xs < self.width - 0.5)

    def level0_sampling(self) -> np.ndarray:
        """For each level-0 px of a window, the index of the model px that covers it."""
        idx = np.floor((np.arange(self.extent0) + 0.5) / self.step).astype(np.int64)
        return np.clip(idx, 0, self.model_side - 1)

    def tiles_over(self, mask: np.ndarray, mask_downsample: float) -> list[tuple[int, int]]:
        """(row, col) of every tile whose core touches ``mask`` (a low-resolution tissue mask
        whose pixels are ``mask_downsample`` level-0 px wide), in raster order."""
        import scipy.ndimage as ndi

        grown = ndi.binary_dilation(mask, iterations=1) if mask.any() else mask
        mh, mw = grown.shape
        tiles = []
        for r in range(self.n_rows):
            for c in range(self.n_cols):
                x0, y0, x1, y1 = self.core(r, c)
                a0, b0 = int(x0 / mask_downsample), int(y0 / mask_downsample)
                a1 = min(mw, max(a0 + 1, int(math.ceil(x1 / mask_downsample))))
                b1 = min(mh, max(b0 + 1, int(math.ceil(y1 / mask_downsample))))
                if grown[b0:b1, a0:a1].any():
                    tiles.append((r, c))
        return tiles
