"""Assembling the maps: level 0 of ``maps.zarr`` is written one shard (a square of tile cores)
at a time. Each core's labels come from the owned-nucleus windows of its tile and the eight
neighbours, with ids made global by each tile's offset (nuclei are numbered 1..N in raster order
of their tiles); its probabilities (on request) from its tile's scratch file. A shard is written
whole and by one task only: the bands of ``assembly_bands`` are whole rows of shards."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.outputs.maps import LABELS, PROBABILITIES, level0, open_maps, shard_tiles
from pipeline.slide.work import SlidePlan, Tile, TileSummary, bands, tile_file
from pipeline.tiling import TileGrid


def label_offsets(plan: SlidePlan, summaries: list[list[TileSummary]]) -> dict[Tile, int]:
    """Global id offset per tile: nuclei are numbered 1..N in raster order of their tiles."""
    counts = {s.tile: s.n_nuclei for batch in summaries for s in batch}
    offsets, total = {}, 0
    for tile in plan.tiles:
        offsets[tile] = total
        total += counts.get(tile, 0)
    return offsets


def chunks_to_assemble(plan: SlidePlan) -> list[Tile]:
    """Tissue tiles and their neighbours (a nucleus can reach into a neighbour's core)."""
    grid = plan.grid
    out = set()
    for r, c in plan.tiles:
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if 0 <= r + dr < grid.n_rows and 0 <= c + dc < grid.n_cols:
                    out.add((r + dr, c + dc))
    return sorted(out)


def assembly_bands(plan: SlidePlan, rows_per_band: int) -> list[list[Tile]]:
    """The label chunks to assemble, in bands of about ``rows_per_band`` tile rows (one assembly
    task per band), rounded up to whole rows of maps.zarr shards so no two tasks share a shard."""
    per_shard = shard_tiles(plan.grid.core0, plan.config.map_shard_px)
    return bands(chunks_to_assemble(plan), math.ceil(rows_per_band / per_shard) * per_shard)


class _OwnedWindows:
    """The owned-nucleus label windows of a slide's tiles, decoded on demand; the most recent
    ``size`` kept (the 3×3 neighbourhood as it slides along one shard's rows), so memory is
    bounded by the shard whatever the slide's width. A tile without a window reads as None."""

    def __init__(self, plan: SlidePlan, offsets: dict[Tile, int], codec: Any, size: int) -> None:
        self.plan, self.offsets, self.codec, self.size = plan, offsets, codec, size
        self.extent = plan.grid.extent0
        self.cache: OrderedDict[Tile, np.ndarray | None] = OrderedDict()

    def __getitem__(self, tile: Tile) -> np.ndarray | None:
        if tile in self.cache:
            self.cache.move_to_end(tile)
            return self.cache[tile]
        path = tile_file(self.plan, tile, ".labels.zst")
        win = None
        if tile in self.offsets and path.exists():
            raw = self.codec.decode(path.read_bytes())  # 16-bit ids (window_label_dtype), or 32-bit
            e = self.extent
            win = np.frombuffer(raw, dtype=np.uint16 if len(raw) == 2 * e * e else np.uint32).reshape(e, e)
        self.cache[tile] = win
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return win


def _fill_core(grid: TileGrid, tile: Tile, chunk: np.ndarray, windows: _OwnedWindows, offsets: dict[Tile, int]) -> None:
    """Label one tile core's chunk from the windows of the tile and its eight neighbours, the
    tile's own nuclei first: a pixel keeps the first id written to it."""
    r, c = tile
    x0, y0, x1, y1 = grid.core(r, c)
    e = grid.extent0
    order = [(r, c)] + [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    for source in order:
        win = windows[source]
        if win is None:
            continue
        wx, wy = grid.window_origin(*source)
        # intersection of the neighbour's window with this core, in level-0 px
        ix0, iy0 = max(x0, wx), max(y0, wy)
        ix1, iy1 = min(x1, wx + e), min(y1, wy + e)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        sub = win[iy0 - wy : iy1 - wy, ix0 - wx : ix1 - wx]
        dst = chunk[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        free = (dst == 0) & (sub > 0)
        dst[free] = sub[free].astype(np.uint32) + offsets[source]


def _shards_of(chunks: list[Tile], per_shard: int) -> dict[Tile, list[Tile]]:
    """The chunks grouped by the maps.zarr shard that holds them."""
    shards: dict[Tile, list[Tile]] = {}
    for r, c in chunks:
        shards.setdefault((r // per_shard, c // per_shard), []).append((r, c))
    return shards


def _probability_core(plan: SlidePlan, tile: Tile, codec: Any, channels: int) -> np.ndarray | None:
    """A tile core's saved probabilities (channels × core rows × core columns, uint8), if any."""
    path = tile_file(plan, tile, ".prob.zst")
    if not path.exists():
        return None
    x0, y0, x1, y1 = plan.grid.core(*tile)
    return np.frombuffer(codec.decode(path.read_bytes()), dtype=np.uint8).reshape(channels, y1 - y0, x1 - x0)


def assemble_labels(plan: SlidePlan, chunks: list[Tile], summaries: list[list[TileSummary]]) -> dict[str, float]:
    """Write the maps.zarr level-0 shards that hold the label chunks ``chunks`` (one per tile core,
    whole shards: all of a shard's chunks are in ``chunks`` or none); each chunk from the
    owned-nucleus windows of its tile and its eight neighbours, the tile's own nuclei taking
    precedence. Returns the stage's seconds (``{"assemble": s}``, summed into stats.json's
    ``stage_seconds``)."""
    import numcodecs

    started = time.perf_counter()
    grid = plan.grid
    offsets = label_offsets(plan, summaries)
    codec = numcodecs.Zstd()
    maps = open_maps(Path(plan.work_dir))
    labels0, probs0 = level0(maps, LABELS), level0(maps, PROBABILITIES)
    per_shard = labels0.shards[0] // grid.core0
    windows = _OwnedWindows(plan, offsets, codec, size=3 * (per_shard + 2))
    side = per_shard * grid.core0
    for (sr, sc), members in sorted(_shards_of(chunks, per_shard).items()):
        sx0, sy0 = sc * side, sr * side
        sx1, sy1 = min(sx0 + side, grid.width), min(sy0 + side, grid.height)
        labels = np.zeros((sy1 - sy0, sx1 - sx0), dtype=np.uint32)
        probs = None if probs0 is None else np.zeros((probs0.shape[0], *labels.shape), dtype=np.uint8)
        for tile in sorted(members):
            x0, y0, x1, y1 = grid.core(*tile)
            _fill_core(grid, tile, labels[y0 - sy0 : y1 - sy0, x0 - sx0 : x1 - sx0], windows, offsets)
            core = None if probs is None else _probability_core(plan, tile, codec, probs.shape[0])
            if probs is not None and core is not None:
                probs[:, y0 - sy0 : y1 - sy0, x0 - sx0 : x1 - sx0] = core
        if labels.any():
            labels0[sy0:sy1, sx0:sx1] = labels
        if probs is not None and probs0 is not None and probs.any():
            probs0[:, sy0:sy1, sx0:sx1] = probs
    return {"assemble": time.perf_counter() - started}
