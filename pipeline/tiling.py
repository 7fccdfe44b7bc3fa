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
from functools import cached_property

import numpy as np

INPUT_MULTIPLE = 16
# Default tile cores (pipeline.config tile_px = 0). On CPU workers larger cores cost memory: ONNX
# Runtime's arena grows with the window (~430 bytes a window pixel: 0.84 GB a run at 1,376², 2.75 GB
# at 2,464²; a 2-thread worker peaks at 2.1 GB with 1024-px cores, 7.4 GB with 2176,
# benchmarks/RESULTS-pipeline.md). On a GPU the arena is on the device, and the
# halo's share of every device stage shrinks with the core: there the smallest core whose window
# (core + 2 halos) is at most MAX_WINDOW_AREA × its area.
CPU_TILE_PX = 1024
MAX_WINDOW_AREA = 1.35


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def nucleus_reach_px(max_nucleus_px: int) -> int:
    """How far a nucleus's pixels lie from its centroid, at most, for a nucleus at most
    ``max_nucleus_px`` across: two thirds of it (the centroid of a convex shape divides every
    chord through it at most 2:1). On the 16,958 MoNuSeg training nuclei (40x) all but one lie
    within 64 px of their centroid, 99.9 % within 49 px (benchmarks/RESULTS-pipeline.md); the
    other is 142 px across, beyond ``max_nucleus_px`` anyway.

    >>> nucleus_reach_px(96)
    64
    """
    return -(-2 * max_nucleus_px // 3)


def derive_halo_px(context_px: int, max_nucleus_px: int) -> int:
    """Halo at model resolution: the network's context beyond the farthest pixel of a nucleus
    whose centroid is in the core, rounded up to the model's input multiple.

    >>> derive_halo_px(100, 96)  # the shipped model: a 1024-px core is read as a 1376² window
    176
    """
    return round_up(context_px + nucleus_reach_px(max_nucleus_px), INPUT_MULTIPLE)


def default_tile_px(halo_px: int, on_gpu: bool) -> int:
    """The tile core (model px) used when the configuration leaves it at 0.

    >>> default_tile_px(176, on_gpu=False), default_tile_px(176, on_gpu=True)  # the shipped model
    (1024, 2176)
    """
    if not on_gpu:
        return CPU_TILE_PX
    return max(CPU_TILE_PX, round_up(2 * halo_px / (math.sqrt(MAX_WINDOW_AREA) - 1), INPUT_MULTIPLE))


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``core0`` level-0 px tiling a ``width``×``height`` slide, read with ``halo0`` px
    around each. ``scale`` = level-0 px per model px (model mpp / slide mpp).

    Where the slide is not at the model's resolution, every tile samples one slide-wide grid of
    model pixels (model pixel k centred on level-0 (k + ½)·scale − ½) from a window that starts
    at a multiple of 16 of it: a slide location then reaches the network as the same pixels at
    the same place of its pooling grid whatever tile, or tile size, reads it (a per-window
    resampling shifted both by a fraction of a pixel from tile to tile, and the network's output
    with them). A tile's level-0 *label window* stays core + halo (``window_origin``,
    ``extent0``); its model window covers it (``model_origin``, ``model_side``), read from a
    level-0 region one pixel wider for the interpolation (``read_window``).
    """

    width: int
    height: int
    core0: int
    halo0: int
    scale: float

    @classmethod
    def for_slide(
        cls, width: int, height: int, slide_mpp: float, model_mpp: float, tile_px: int, halo_px: int
    ) -> TileGrid:
        """The grid of a slide for a model: a core of ``tile_px`` and a halo of ``halo_px`` model px,
        converted to level-0 px; a slide smaller than one tile gets one tile of its own size.

        Parameters
        ----------
        width, height : int
            Size of level 0, in px.
        slide_mpp : float
            The slide's resolution, in µm per level-0 px.
        model_mpp : float
            The model's resolution, in µm per model px.
        tile_px : int
            Side of a tile's core, in model px.
        halo_px : int
            Context read around each core, in model px.

        Returns
        -------
        TileGrid
            The grid, sizes in level-0 px.

        Raises
        ------
        ValueError
            When the halo exceeds the core and the slide needs more than one tile.
        """
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
        """Side of a tile's label window in level-0 px (core + 2 halos)."""
        return self.core0 + 2 * self.halo0

    @property
    def resampled(self) -> bool:
        """Whether tiles are resampled to the model's resolution (else read as they are)."""
        return self.scale != 1.0

    def _model_start(self, level0_start: int) -> int:
        """First model px of the window over a label window starting at ``level0_start``: the
        model px covering that level-0 px, down to a multiple of 16."""
        if not self.resampled:
            return level0_start
        return math.floor((level0_start + 0.5) / self.scale) // INPUT_MULTIPLE * INPUT_MULTIPLE

    def _model_index(self, level0: np.ndarray) -> np.ndarray:
        """The slide-wide model px covering each level-0 px."""
        return np.floor((np.asarray(level0) + 0.5) / self.scale).astype(np.int64)

    @cached_property
    def model_side(self) -> int:
        """Side of a tile's model window (before padding to 16): the same for every tile, enough
        for the label window of any of them."""
        if not self.resampled:
            return self.extent0
        starts = np.arange(max(self.n_rows, self.n_cols)) * self.core0 - self.halo0
        last = self._model_index(starts + self.extent0 - 1)
        return int(max(last[i] + 1 - self._model_start(int(x)) for i, x in enumerate(starts)))

    @property
    def model_input_side(self) -> int:
        return round_up(self.model_side, INPUT_MULTIPLE)

    def core(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the core in level-0 px, clipped to the slide."""
        x0, y0 = col * self.core0, row * self.core0
        return x0, y0, min(x0 + self.core0, self.width), min(y0 + self.core0, self.height)

    def window_origin(self, row: int, col: int) -> tuple[int, int]:
        """Level-0 (x, y) of the label window's top-left pixel (may be negative: the image is mirrored there)."""
        return col * self.core0 - self.halo0, row * self.core0 - self.halo0

    def model_origin(self, row: int, col: int) -> tuple[int, int]:
        """Slide-wide model-resolution (x, y) of the model window's top-left pixel (multiples of
        16 when resampled)."""
        ox, oy = self.window_origin(row, col)
        return self._model_start(ox), self._model_start(oy)

    def read_window(self, row: int, col: int) -> tuple[int, int, int]:
        """Level-0 (x, y, side) of the region a tile's model window is interpolated from."""
        if not self.resampled:
            ox, oy = self.window_origin(row, col)
            return ox, oy, self.extent0
        mx, my = self.model_origin(row, col)
        x, y = (math.floor((m + 0.5) * self.scale - 0.5) for m in (mx, my))  # the first sample's left neighbour
        return x, y, int(math.ceil(self.model_side * self.scale)) + 3

    def model_sampling(self, row: int, col: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Bilinear sampling of a tile's model window from its read region, for its rows and for
        its columns: the index (in the region) of the level-0 pixel before each sample, and the
        weight of the one after. Both come from the slide-wide model index alone, so two tiles
        compute a shared pixel with the same numbers."""
        x0, y0, _ = self.read_window(row, col)
        mx, my = self.model_origin(row, col)
        k = np.arange(self.model_side)

        def axis(m: int, start: int) -> tuple[np.ndarray, np.ndarray]:
            u = (m + k + 0.5) * self.scale - 0.5  # the sample's centre in level-0 px
            before = np.floor(u)
            return (before - start).astype(np.int64), (u - before).astype(np.float32)

        return axis(my, y0), axis(mx, x0)

    def to_level0(self, row: int, col: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-resolution (row, col) positions in a tile's window → level-0 (x, y).
        Pixel centres: slide-wide model pixel k spans [k·scale, (k+1)·scale) of level 0.

        Parameters
        ----------
        row, col : int
            The tile's position in the grid.
        rows, cols : np.ndarray
            Positions in the tile's model window, in model px (rows: y, cols: x).

        Returns
        -------
        x, y : np.ndarray
            Level-0 coordinates, in px (pixel centres on whole numbers).
        """
        mx, my = self.model_origin(row, col)
        s = self.scale
        return (mx + np.asarray(cols) + 0.5) * s - 0.5, (my + np.asarray(rows) + 0.5) * s - 0.5

    def inside_slide(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Which model-resolution rows and columns of a tile's window have their centre on the
        slide (the rest is the mirrored continuation the window was read with)."""
        j = np.arange(self.model_side)
        xs, ys = self.to_level0(row, col, j, j)
        return (ys >= -0.5) & (ys < self.height - 0.5), (xs >= -0.5) & (xs < self.width - 0.5)

    def level0_sampling(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """For each level-0 row and column of a tile's label window, the row and column of its
        model window that covers it."""
        ox, oy = self.window_origin(row, col)
        mx, my = self.model_origin(row, col)
        i = np.arange(self.extent0)
        if not self.resampled:
            return i, i
        rows = np.clip(self._model_index(oy + i) - my, 0, self.model_side - 1)
        cols = np.clip(self._model_index(ox + i) - mx, 0, self.model_side - 1)
        return rows, cols

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
