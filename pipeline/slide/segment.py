"""Segmenting tiles: read each tile's window (core + halo), normalise its stain with the
slide's statistics, infer, separate touching nuclei with the watershed, and keep the nuclei
whose centroid lies in the tile's core (seam-free). Each tile's owned nuclei (a small table and
a level-0 label window with local ids, and on request the core's probabilities) go to the
slide's working folder, for the assembly to gather into maps.zarr.

With ``device`` on the GPU every stage after the file read stays there (one dispatch point:
the kernels take numpy or cupy arrays alike).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.io.outputs.maps import PROBABILITY_CHANNELS
from pipeline.io.outputs.publish import atomic_write_bytes
from pipeline.io.outputs.schema import NUCLEI_SCHEMA, OUTLINE_STEP_PX, OUTLINE_TOLERANCE_PX
from pipeline.io.readers import (
    GlassWhereUnreadable,
    Slide,
    UnreadableRegion,
    UnreadableTile,
    mirrored_index,
    open_slide,
    read_mirrored,
)
from pipeline.kernels.dispatch import gpu_available, to_host
from pipeline.kernels.features import nucleus_moments, outline_arrays, outline_perimeters
from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities
from pipeline.kernels.outlines import on_grid, stored_rings
from pipeline.kernels.stain import MacenkoStains, StainStats, haematoxylin
from pipeline.runtime import NucleusModel
from pipeline.slide.model_input import model_input, normalise_stain
from pipeline.slide.work import ARTIFACT_MASK_FILE, SlidePlan, Tile, TileSummary, model_for, tile_file
from pipeline.tiling import TileGrid


def use_device(config: Config) -> bool:
    """Whether the stages after the file read run on the GPU."""
    if config.device == "cpu":
        return False
    if config.device == "gpu" and not gpu_available():
        raise RuntimeError("device=gpu was requested but no CUDA device is visible to this worker")
    return gpu_available()


def resample_to_model(region: np.ndarray, grid: TileGrid, tile: Tile) -> np.ndarray:
    """A tile's level-0 read region (``grid.read_window``) → its model window (uint8 RGB):
    bilinear samples of the slide-wide model grid, rows then columns, so every tile computes
    the same values for the same pixel."""
    if not grid.resampled:
        return region
    (rows, row_w), (cols, col_w) = grid.model_sampling(*tile)
    values = region.astype(np.float32)
    along = values[rows] * (1 - row_w)[:, None, None] + values[rows + 1] * row_w[:, None, None]
    out = along[:, cols] * (1 - col_w)[None, :, None] + along[:, cols + 1] * col_w[None, :, None]
    return np.rint(out).astype(np.uint8)


def read_tile(slide: Slide | GlassWhereUnreadable, grid: TileGrid, tile: Tile) -> np.ndarray:
    """A tile's model window (core + halo at model resolution, the image mirrored beyond the
    slide's edge)."""
    x, y, side = grid.read_window(*tile)
    return resample_to_model(read_mirrored(slide, x, y, side, side, 0), grid, tile)


def tile_nuclei(
    labels: np.ndarray,
    h_map: np.ndarray,
    grid: TileGrid,
    tile: Tile,
    mpp: float,
    excluded: ExcludedPixels | None = None,
) -> tuple[pa.Table, np.ndarray]:
    """The nuclei a tile owns (centroid inside its core, not on an artifact) as a table with
    local ids 1..k, and the map old label → local id (0 = not owned). Centroids and outlines are
    in level-0 px as they are stored (``schema.OUTLINE_STEP_PX``, ``OUTLINE_TOLERANCE_PX``); the
    perimeter is the traced outline's.

    Parameters
    ----------
    labels : np.ndarray
        int32 labels of the tile's window at model resolution, 0 = background.
    h_map : np.ndarray
        Haematoxylin map of the window, same shape.
    grid : TileGrid
        The slide's tile grid.
    tile : (int, int)
        (row, col) of the tile in the grid.
    mpp : float
        The slide's resolution, in µm per level-0 px.
    excluded : ExcludedPixels or None, optional
        Artifact mask; nuclei centred on it are not owned. None: none excluded.

    Returns
    -------
    table : pa.Table
        The owned nuclei in ``NUCLEI_SCHEMA``, ids 1..k.
    local : np.ndarray
        uint32 map from window label to local id, 0 = not owned.
    """
    model_mpp = grid.scale * mpp
    moments = nucleus_moments(labels, h_map)
    x, y = grid.to_level0(tile[0], tile[1], moments["row"], moments["col"])
    cx0, cy0, cx1, cy1 = grid.core(*tile)
    owned = (moments["area"] > 0) & (x >= cx0 - 0.5) & (x < cx1 - 0.5) & (y >= cy0 - 0.5) & (y < cy1 - 0.5)
    if excluded is not None:
        owned &= ~excluded.at(x, y)
    ids = np.nonzero(owned)[0] + 1
    local = np.zeros(labels.max() + 1 if labels.size else 1, dtype=np.uint32)
    local[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    rows, cols, offsets = outline_arrays(labels, ids)
    px, py = grid.to_level0(tile[0], tile[1], rows, cols)
    px, py, kept = stored_rings(px, py, offsets, OUTLINE_STEP_PX, OUTLINE_TOLERANCE_PX)
    flat = np.empty(2 * len(px))
    flat[0::2], flat[1::2] = px, py
    polygon = pa.ListArray.from_arrays(pa.array(2 * kept, type=pa.int32()), pa.array(flat, type=pa.float64()))
    perimeters = outline_perimeters(rows, cols, offsets) * grid.scale  # of the traced outline
    sel = ids - 1
    area_um2 = moments["area"][sel] * model_mpp**2
    table = pa.table(
        {
            "id": pa.array(np.arange(1, len(ids) + 1, dtype=np.uint32)),
            "centroid_x": on_grid(x[sel], OUTLINE_STEP_PX),
            "centroid_y": on_grid(y[sel], OUTLINE_STEP_PX),
            "area_px": area_um2 / mpp**2,
            "area_um2": area_um2,
            "perimeter_px": perimeters,
            "eccentricity": moments["eccentricity"][sel],
            "mean_haematoxylin": moments["mean_intensity"][sel],
            "polygon": polygon,
        },
        schema=NUCLEI_SCHEMA,
    )
    return table, local


def segment_window(
    rgb: np.ndarray,
    model: NucleusModel,
    thresholds: NucleusThresholds,
    stain: StainStats | MacenkoStains | None,
    side: int,
    on_device: bool = False,
    want_prob: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, dict[str, float]]:
    """One window at model resolution → (instance labels, centre and material probabilities
    2×H×W or None, haematoxylin map, seconds per stage), all returned on the host.

    With ``on_device`` the window goes to the GPU once and normalisation, inference (without
    host round trips), seeds, watershed and the haematoxylin map run there; only the labels,
    the haematoxylin map and (when asked for) the probabilities come back.

    Parameters
    ----------
    rgb : np.ndarray
        RGB uint8 window at model resolution, H×W×3.
    model : NucleusModel
        The nucleus model.
    thresholds : NucleusThresholds
        Thresholds of the instance post-processing.
    stain : StainStats, MacenkoStains or None
        The slide's stain statistics for the normalisation; None: no normalisation.
    side : int
        Side of the model input, in model px (the window is padded to it with white).
    on_device : bool, optional
        Run normalisation, inference and post-processing on the GPU.
    want_prob : bool, optional
        Return the probabilities too.

    Returns
    -------
    labels : np.ndarray
        int32 instance labels, H×W, 0 = background.
    prob : np.ndarray or None
        Probabilities, 2×H×W; None unless ``want_prob``.
    h_map : np.ndarray
        Haematoxylin map, H×W.
    seconds : dict of str to float
        Seconds of ``normalise``, ``infer`` and ``watershed``.
    """
    t0 = time.perf_counter()
    if on_device:
        import cupy

        rgb = cupy.asarray(rgb)
    normalised = normalise_stain(rgb, stain)
    t1 = time.perf_counter()
    batch = model_input([normalised], side)
    prob = (model.predict_device(batch) if on_device else model.predict(batch))[0, :, : rgb.shape[0], : rgb.shape[1]]
    t2 = time.perf_counter()
    labels = instances_from_probabilities(prob, thresholds)
    h_map = haematoxylin(normalised)
    t3 = time.perf_counter()
    seconds = {"normalise": t1 - t0, "infer": t2 - t1, "watershed": t3 - t2}
    # the probability maps a run keeps are the centre and the material (a four-output model's
    # distance maps serve the post-processing only)
    kept = prob[: len(PROBABILITY_CHANNELS)]
    return to_host(labels), (to_host(kept) if want_prob else None), to_host(h_map), seconds


def cut_at_slide_edge(labels: np.ndarray, grid: TileGrid, tile: Tile, min_area_px: int) -> np.ndarray:
    """Labels of a tile's window without the pixels that lie off the slide: a nucleus the slide's
    edge cuts is measured (area, outline, centroid) as far as the slide holds it, never with its
    mirror image, and dropped, as any small object, when less than ``min_area_px`` is left.

    Ids are not renumbered (the tile's table numbers its nuclei itself, in the same order).

    Parameters
    ----------
    labels : np.ndarray
        int32 labels of the tile's window at model resolution, 0 = background.
    grid : TileGrid
        The slide's tile grid.
    tile : (int, int)
        (row, col) of the tile in the grid.
    min_area_px : int
        Smallest nucleus kept, in model px.

    Returns
    -------
    np.ndarray
        The labels, 0 off the slide (``labels`` itself when the window lies within the slide).
    """
    rows, cols = grid.inside_slide(*tile)
    if rows.all() and cols.all():
        return labels
    cut = labels.copy()
    cut[~rows] = 0
    cut[:, ~cols] = 0
    counts = np.bincount(cut.ravel())
    small = (counts > 0) & (counts < min_area_px)
    small[0] = False
    if small.any():
        cut[small.take(cut)] = 0
    return cut


@dataclass(frozen=True)
class ExcludedPixels:
    """The slide's artifact mask on its low-resolution view (pen ink, folds): nuclei there are not reported."""

    mask: np.ndarray  # bool, rows × columns of the view
    downsample: float  # level-0 px per view px

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 points (x, y) lie on an excluded view pixel."""
        rows = np.clip((np.asarray(y) / self.downsample).astype(np.int64), 0, self.mask.shape[0] - 1)
        cols = np.clip((np.asarray(x) / self.downsample).astype(np.int64), 0, self.mask.shape[1] - 1)
        return self.mask[rows, cols]


@lru_cache(maxsize=8)
def _load_excluded(path: str, rows: int, cols: int, downsample: float) -> ExcludedPixels:
    bits = np.load(path)
    return ExcludedPixels(np.unpackbits(bits)[: rows * cols].reshape(rows, cols).astype(bool), downsample)


def excluded_pixels(plan: SlidePlan) -> ExcludedPixels | None:
    """The plan's artifact mask (read once per worker process and slide), or None when it has none."""
    if plan.artifact_view is None:
        return None
    rows, cols, downsample = plan.artifact_view
    return _load_excluded(str(Path(plan.work_dir) / ARTIFACT_MASK_FILE), rows, cols, downsample)


def segment_tiles(plan: SlidePlan, tiles: list[Tile]) -> list[TileSummary]:
    """Read, normalise, infer and watershed a batch of tiles; write each tile's owned nuclei
    (table + level-0 label window with local ids) into the slide's working folder."""
    import numcodecs

    grid = plan.grid
    model = model_for(plan.config, plan.model_path)
    on_device = use_device(plan.config)
    codec = numcodecs.Zstd(level=3)
    summaries = []
    with open_slide(plan.slide_path, plan.reader) as slide:
        for tile in tiles:
            t0 = time.perf_counter()
            unreadable: list[UnreadableTile] = []
            try:
                rgb = read_tile(slide, grid, tile)
            except UnreadableRegion:  # glass where the file's tiles cannot be decoded; listed (reduce bounds the loss)
                rgb = read_tile(GlassWhereUnreadable(slide, unreadable), grid, tile)
                write_unreadable(plan, tile, unreadable)
            t1 = time.perf_counter()
            labels, prob, h_map, seconds = segment_window(
                rgb,
                model,
                plan.thresholds,
                plan.stain,
                grid.model_input_side,
                on_device,
                want_prob=plan.config.save_probabilities,
            )
            if unreadable:
                labels = drop_unreadable(labels, unreadable_pixels(grid, tile, unreadable, slide.level_dimensions[0]))
            n_nuclei, written = write_tile_outputs(plan, tile, labels, h_map, prob, codec)
            summaries.append(TileSummary(tile, n_nuclei, {"read": t1 - t0, **seconds, **written}))
    return summaries


def unreadable_pixels(
    grid: TileGrid, tile: Tile, unreadable: list[UnreadableTile], size: tuple[int, int]
) -> np.ndarray:
    """The pixels of a tile's window (model resolution) that show an unreadable tile of level 0,
    mirrored beyond the slide's edge as the window is.

    Parameters
    ----------
    grid : TileGrid
        The slide's tile grid.
    tile : (int, int)
        (row, col) of the tile in the grid.
    unreadable : list of UnreadableTile
        The file's tiles that could not be decoded, in level-0 px.
    size : (int, int)
        (width, height) of level 0, in px.

    Returns
    -------
    np.ndarray
        Bool mask of the model window, ``grid.model_side`` square.
    """
    ox, oy = grid.window_origin(*tile)
    rows = mirrored_index(np.arange(oy, oy + grid.extent0), size[1])
    cols = mirrored_index(np.arange(ox, ox + grid.extent0), size[0])
    row_sampling, col_sampling = grid.level0_sampling(*tile)
    mask = np.zeros((grid.model_side, grid.model_side), dtype=bool)
    for t in unreadable:
        in_rows = np.zeros(grid.model_side, dtype=bool)
        in_cols = np.zeros(grid.model_side, dtype=bool)
        in_rows[row_sampling[(rows >= t.y) & (rows < t.y + t.height)]] = True
        in_cols[col_sampling[(cols >= t.x) & (cols < t.x + t.width)]] = True
        mask |= np.outer(in_rows, in_cols)
    return mask


def drop_unreadable(labels: np.ndarray, unreadable: np.ndarray) -> np.ndarray:
    """Labels without the nuclei that touch unreadable pixels (seen as glass, they would be cut)."""
    ids = np.unique(labels[unreadable])
    ids = ids[ids > 0]
    return np.where(np.isin(labels, ids), 0, labels) if ids.size else labels


UNREADABLE_SUFFIX = ".unreadable.json"  # beside a tile's scratch outputs: the file's tiles it could not read


def write_unreadable(plan: SlidePlan, tile: Tile, tiles: list[UnreadableTile]) -> None:
    """Record a segmentation tile whose window holds tiles of the file the decoder rejects."""
    body = json.dumps([t.as_dict() for t in tiles]).encode()
    atomic_write_bytes(tile_file(plan, tile, UNREADABLE_SUFFIX), body, durable=False)


def window_label_dtype(n_nuclei: int) -> type[np.unsignedinteger]:
    """The type of a tile's scratch label window (local ids 1..n): 16 bits while they fit, which
    halves what the label assembly holds per cached window; 32 bits beyond.

    >>> window_label_dtype(65_535).__name__, window_label_dtype(65_536).__name__
    ('uint16', 'uint32')
    """
    return np.uint16 if n_nuclei <= np.iinfo(np.uint16).max else np.uint32


def write_tile_outputs(
    plan: SlidePlan,
    tile: Tile,
    labels: np.ndarray,
    h_map: np.ndarray,
    prob: np.ndarray | None,
    codec: Any,
) -> tuple[int, dict[str, float]]:
    """A segmented tile's owned nuclei (cut at the slide's edge) → its scratch table and level-0
    label window (and the probability chunk when given). Returns the number of nuclei and seconds
    for features / write.

    Parameters
    ----------
    plan : SlidePlan
        The slide's plan.
    tile : (int, int)
        (row, col) of the tile in the grid.
    labels : np.ndarray
        int32 labels of the tile's window at model resolution, 0 = background.
    h_map : np.ndarray
        Haematoxylin map of the window, same shape.
    prob : np.ndarray or None
        Probabilities of the window, 2×H×W; None writes none.
    codec : Any
        The codec the scratch files are encoded with (``encode(array) -> bytes``).

    Returns
    -------
    n_nuclei : int
        Number of nuclei the tile owns.
    seconds : dict of str to float
        Seconds of ``features`` and ``write``.
    """
    t0 = time.perf_counter()
    labels = cut_at_slide_edge(labels, plan.grid, tile, plan.thresholds.min_area_px)
    table, local = tile_nuclei(labels, h_map, plan.grid, tile, plan.mpp, excluded_pixels(plan))
    t1 = time.perf_counter()
    owned = local.astype(window_label_dtype(table.num_rows), copy=False).take(labels)
    if plan.grid.resampled:  # back onto the level-0 grid
        owned = owned[np.ix_(*plan.grid.level0_sampling(*tile))]
    atomic_write_bytes(tile_file(plan, tile, ".labels.zst"), codec.encode(np.ascontiguousarray(owned)), durable=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(tile_file(plan, tile, ".parquet"), sink.getvalue().to_pybytes(), durable=False)
    if prob is not None:
        write_probability_core(plan, tile, prob, codec)
    return table.num_rows, {"features": t1 - t0, "write": time.perf_counter() - t1}


def write_probability_core(plan: SlidePlan, tile: Tile, prob: np.ndarray, codec: Any) -> None:
    """The tile core's probabilities on the level-0 grid, as uint8 (× 255), to the tile's scratch
    file (the assembly copies it into its maps.zarr shard: tiles never write a shard themselves).

    Parameters
    ----------
    plan : SlidePlan
        The slide's plan.
    tile : (int, int)
        (row, col) of the tile in the grid.
    prob : np.ndarray
        Probabilities of the tile's window at model resolution, 2×H×W, in [0, 1].
    codec : Any
        The codec the scratch file is encoded with (``encode(array) -> bytes``).
    """
    grid = plan.grid
    x0, y0, x1, y1 = grid.core(*tile)
    h = grid.halo0
    rows, cols = grid.level0_sampling(*tile)  # the core's level-0 rows and columns only
    level0 = prob[:, rows[h : h + (y1 - y0)]][:, :, cols[h : h + (x1 - x0)]]
    core = np.ascontiguousarray(np.round(level0 * 255).astype(np.uint8))
    atomic_write_bytes(tile_file(plan, tile, ".prob.zst"), codec.encode(core), durable=False)
