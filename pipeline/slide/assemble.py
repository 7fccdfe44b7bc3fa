"""Assembling the label map: each chunk (one tile core) of ``maps.zarr/labels`` is written from
the owned-nucleus windows of its tile and the eight neighbours, with ids made global by each
tile's offset (nuclei are numbered 1..N in raster order of their tiles)."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.io.outputs.maps import open_maps
from pipeline.slide.plan import SlidePlan, Tile, TileSummary, tile_file

WINDOW_CACHE = 12  # decoded neighbour windows kept while assembling label chunks


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


def assemble_labels(plan: SlidePlan, chunks: list[Tile], summaries: list[list[TileSummary]]) -> dict[str, float]:
    """Write the label-map chunks ``chunks`` (one per tile core) from the owned-nucleus windows of
    the tile and its eight neighbours; the tile's own nuclei take precedence. Returns the stage's
    seconds (``{"assemble": s}``, summed into stats.json's ``stage_seconds``)."""
    import numcodecs

    started = time.perf_counter()
    grid = plan.grid
    offsets = label_offsets(plan, summaries)
    codec = numcodecs.Zstd()
    maps = open_maps(Path(plan.work_dir))
    labels_arr = maps["labels"]
    e = grid.extent0
    # Recently decoded windows: enough for the 3×3 neighbourhood as it slides along a row,
    # independent of the slide's width, so memory stays bounded on any slide.
    cache: OrderedDict[Tile, np.ndarray | None] = OrderedDict()

    def window(tile: Tile) -> np.ndarray | None:
        if tile in cache:
            cache.move_to_end(tile)
            return cache[tile]
        path = tile_file(plan, tile, ".labels.zst")
        win = (
            np.frombuffer(codec.decode(path.read_bytes()), dtype=np.uint32).reshape(e, e)
            if tile in offsets and path.exists()
            else None
        )
        cache[tile] = win
        if len(cache) > WINDOW_CACHE:
            cache.popitem(last=False)
        return win

    for r, c in chunks:
        x0, y0, x1, y1 = grid.core(r, c)
        chunk = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
        order = [(r, c)] + [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
        for tile in order:
            win = window(tile)
            if win is None:
                continue
            wx, wy = grid.window_origin(*tile)
            # intersection of the neighbour's window with this core, in level-0 px
            ix0, iy0 = max(x0, wx), max(y0, wy)
            ix1, iy1 = min(x1, wx + e), min(y1, wy + e)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            sub = win[iy0 - wy : iy1 - wy, ix0 - wx : ix1 - wx]
            dst = chunk[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            free = (dst == 0) & (sub > 0)
            dst[free] = sub[free] + offsets[tile]
        if chunk.any():
            labels_arr[y0:y1, x0:x1] = chunk
    return {"assemble": time.perf_counter() - started}
