"""The work done for one slide, as plain functions that Dask runs on workers.

``plan_slide`` (open, tissue mask, stain statistics, tile grid) → ``segment_tiles`` (read,
normalise, infer, watershed, keep the nuclei whose centroid lies in the core) for batches of
tiles → ``assemble_labels`` (label-map chunks from each core's own and neighbouring tiles) →
``reduce_slide`` (nucleus tables, statistics, publication). Each function reads and writes
only the slide's working folder; none holds more than a few tiles in memory, whatever the
slide's size. The same functions run in-process for ``pipeline.predict``.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.io.outputs import (
    NUCLEI_SCHEMA,
    STATS_FILE,
    atomic_write_bytes,
    atomic_write_json,
    create_maps,
    final_slide_dir,
    new_partial_dir,
    open_maps,
    publish_slide,
    remove_stale_partials,
    write_nucleus_tables,
)
from pipeline.io.slides import Slide, choose_reader, low_resolution_view, open_slide, read_mirrored
from pipeline.kernels.dispatch import array_module, to_host
from pipeline.kernels.features import nucleus_moments, nucleus_outlines, polygon_perimeter
from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities, remove_small_labels
from pipeline.kernels.stain import (
    MacenkoStains,
    StainStats,
    haematoxylin,
    macenko_normalise,
    macenko_stains,
    reinhard_normalise,
    reinhard_stats,
)
from pipeline.kernels.tissue import tissue_mask
from pipeline.manifest import SlideEntry
from pipeline.model.session import NucleusModel, load_model
from pipeline.tiling import TileGrid, derive_halo_px

# Areas are also reported in pixels at 40x (0.25 µm/px), the paper's unit.
MPP_40X = 0.25

Tile = tuple[int, int]
WINDOW_CACHE = 12  # decoded neighbour windows kept while assembling label chunks


@dataclass(frozen=True)
class SlidePlan:
    """Everything the tile tasks need to know about a slide (small; shipped to every task)."""

    slide_id: str
    cancer_type: str
    slide_path: str
    reader: str
    width: int
    height: int
    mpp: float
    mpp_source: str
    grid: TileGrid
    tiles: tuple[Tile, ...]
    stain: StainStats | MacenkoStains | None
    tissue_mm2: float
    work_dir: str
    out_dir: str
    model_path: str
    model_sha256: str
    thresholds: NucleusThresholds
    config: Config
    started: float = field(default_factory=time.time)


@dataclass(frozen=True)
class TileSummary:
    tile: Tile
    n_nuclei: int
    seconds: dict[str, float]


def model_threads(config: Config) -> int:
    return config.intra_op_threads or 1


def model_for(config: Config, path: str | None = None) -> NucleusModel:
    """This process's session for the configured model (created once, then reused)."""
    return load_model(path or config.model or None, model_threads(config), runtime=config.runtime,
                      half=config.half, trt_cache_dir=config.trt_cache_dir or None)


def use_device(config: Config) -> bool:
    """Whether the stages after the file read run on the GPU."""
    if config.device == "cpu":
        return False
    from pipeline.kernels.dispatch import gpu_available

    if config.device == "gpu" and not gpu_available():
        raise RuntimeError("device=gpu was requested but no CUDA device is visible to this worker")
    return gpu_available()


# ----------------------------------------------------------------------- planning ----

def resolve_mpp(entry: SlideEntry, slide: Slide, config: Config) -> tuple[float, str]:
    """Microns per pixel and where it came from: manifest, slide metadata or the default."""
    if entry.mpp:
        return entry.mpp, "manifest"
    if slide.mpp:
        return slide.mpp, "slide"
    warnings.warn(
        f"{entry.slide_id}: no microns-per-pixel in the slide or the manifest; assuming "
        f"{config.default_mpp} (set the manifest's mpp column to override)",
        stacklevel=2,
    )
    return config.default_mpp, "default"


def plan_slide(entry: SlideEntry, out_dir: str, config: Config) -> SlidePlan:
    """Open the slide, find its tissue on a low-resolution view, compute its stain statistics
    once, lay the tile grid over the tissue and create the slide's working folder."""
    reader = choose_reader(entry.slide_path, config.reader)
    slide = open_slide(entry.slide_path, reader)
    try:
        width, height = slide.level_dimensions[0]
        mpp, mpp_source = resolve_mpp(entry, slide, config)
        model = model_for(config)
        view, view_ds = low_resolution_view(slide, config.tissue_view_px)
    finally:
        slide.close()
    tissue = tissue_mask(view)
    tissue_mm2 = float(tissue.sum()) * (view_ds * mpp) ** 2 / 1e6
    stain: StainStats | MacenkoStains | None = None
    if config.stain == "reinhard":
        stain = reinhard_stats(view, tissue)
    elif config.stain == "macenko":
        stain = macenko_stains(view, tissue)
    halo = config.halo_px if config.halo_px >= 0 else derive_halo_px(model.context_px, config.max_nucleus_px)
    grid = TileGrid.for_slide(width, height, mpp, model.mpp, config.tile_px, halo)
    tiles = tuple(grid.tiles_over(tissue, view_ds))
    remove_stale_partials(Path(out_dir), entry.slide_id)
    work = new_partial_dir(Path(out_dir), entry.slide_id)
    (work / "tiles").mkdir()
    create_maps(work, width, height, grid.core0, config.save_probabilities)
    return SlidePlan(
        slide_id=entry.slide_id,
        cancer_type=entry.cancer_type,
        slide_path=str(entry.slide_path),
        reader=reader,
        width=width,
        height=height,
        mpp=mpp,
        mpp_source=mpp_source,
        grid=grid,
        tiles=tiles,
        stain=stain,
        tissue_mm2=tissue_mm2,
        work_dir=str(work),
        out_dir=out_dir,
        model_path=str(model.path),
        model_sha256=model.sha256,
        thresholds=model.thresholds,
        config=config,
    )


# ---------------------------------------------------------------- tile segmentation ----

def resample_to_model(window: np.ndarray, grid: TileGrid) -> np.ndarray:
    """A level-0 read window resampled to the model's resolution (bilinear, pixel areas aligned)."""
    side = grid.model_side
    if window.shape[0] == side and window.shape[1] == side:
        return window
    import scipy.ndimage as ndi

    zoom = (side / window.shape[0], side / window.shape[1], 1)
    return np.asarray(ndi.zoom(window, zoom, order=1, grid_mode=True, mode="nearest"))


def read_tile(slide: Slide, grid: TileGrid, tile: Tile) -> np.ndarray:
    """A tile's window (core + halo, the image mirrored beyond the slide's edge) at model resolution."""
    ox, oy = grid.window_origin(*tile)
    return resample_to_model(read_mirrored(slide, ox, oy, grid.extent0, grid.extent0, 0), grid)


def normalise_stain(rgb: Any, stain: StainStats | MacenkoStains | None) -> Any:
    """uint8 RGB → float32 RGB in [0, 1], normalised with the slide's statistics (numpy or cupy)."""
    xp = array_module(rgb)
    if isinstance(stain, StainStats):
        return reinhard_normalise(rgb, stain).astype(xp.float32, copy=False)
    if isinstance(stain, MacenkoStains):
        return macenko_normalise(rgb, stain).astype(xp.float32, copy=False)
    return rgb.astype(xp.float32) / 255.0


def model_input(images: list[Any], side: int) -> Any:
    """Stack H×W×3 float images into N×3×side×side, padding right/bottom with white."""
    xp = array_module(images[0])
    batch = xp.ones((len(images), 3, side, side), dtype=xp.float32)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[0], : img.shape[1]] = img.transpose(2, 0, 1)
    return batch


def tile_nuclei(
    labels: np.ndarray, h_map: np.ndarray, grid: TileGrid, tile: Tile, mpp: float
) -> tuple[pa.Table, np.ndarray]:
    """The nuclei a tile owns (centroid inside its core) as a table with local ids 1..k, and
    the map old label → local id (0 = not owned)."""
    model_mpp = grid.scale * mpp
    moments = nucleus_moments(labels, h_map)
    x, y = grid.to_level0(tile[0], tile[1], moments["row"], moments["col"])
    cx0, cy0, cx1, cy1 = grid.core(*tile)
    owned = (moments["area"] > 0) & (x >= cx0 - 0.5) & (x < cx1 - 0.5) & (y >= cy0 - 0.5) & (y < cy1 - 0.5)
    ids = np.nonzero(owned)[0] + 1
    local = np.zeros(labels.max() + 1 if labels.size else 1, dtype=np.uint32)
    local[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    rings = nucleus_outlines(labels, ids)
    polygons = []
    perimeters = []
    for ring in rings:
        px, py = grid.to_level0(tile[0], tile[1], ring[:, 0], ring[:, 1])
        flat = np.empty(2 * len(ring))
        flat[0::2], flat[1::2] = px, py
        polygons.append(flat)
        perimeters.append(polygon_perimeter(ring) * grid.step)
    sel = ids - 1
    area_um2 = moments["area"][sel] * model_mpp**2
    table = pa.table(
        {
            "id": pa.array(np.arange(1, len(ids) + 1, dtype=np.uint32)),
            "centroid_x": x[sel],
            "centroid_y": y[sel],
            "area_px": area_um2 / mpp**2,
            "area_um2": area_um2,
            "perimeter_px": np.asarray(perimeters, dtype=np.float64),
            "eccentricity": moments["eccentricity"][sel],
            "mean_haematoxylin": moments["mean_intensity"][sel],
            "polygon": pa.array([p.tolist() for p in polygons], type=pa.list_(pa.float64())),
        },
        schema=NUCLEI_SCHEMA,
    )
    return table, local


def tile_file(plan: SlidePlan, tile: Tile, suffix: str) -> Path:
    return Path(plan.work_dir) / "tiles" / f"r{tile[0]:05d}_c{tile[1]:05d}{suffix}"


def segment_window(
    rgb: np.ndarray, model: NucleusModel, thresholds: NucleusThresholds,
    stain: StainStats | MacenkoStains | None, side: int, on_device: bool = False, want_prob: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, dict[str, float]]:
    """One window at model resolution → (instance labels, probabilities 2×H×W or None, haematoxylin
    map, seconds per stage), all returned on the host.

    With ``on_device`` the window goes to the GPU once and normalisation, inference (without
    host round trips), seeds, watershed and the haematoxylin map run there; only the labels,
    the haematoxylin map and (when asked for) the probabilities come back.
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
    return to_host(labels), (to_host(prob) if want_prob else None), to_host(h_map), seconds


def cut_at_slide_edge(labels: np.ndarray, grid: TileGrid, tile: Tile, min_area_px: int) -> np.ndarray:
    """Labels of a tile's window without the pixels that lie off the slide: a nucleus the slide's
    edge cuts is measured (area, outline, centroid) as far as the slide holds it, never with its
    mirror image, and dropped, as any small object, when less than ``min_area_px`` is left."""
    rows, cols = grid.inside_slide(*tile)
    if rows.all() and cols.all():
        return labels
    return remove_small_labels(np.where(rows[:, None] & cols[None, :], labels, 0), min_area_px)


def segment_tiles(plan: SlidePlan, tiles: list[Tile]) -> list[TileSummary]:
    """Read, normalise, infer and watershed a batch of tiles; write each tile's owned nuclei
    (table + level-0 label window with local ids) into the slide's working folder."""
    import numcodecs

    grid = plan.grid
    model = model_for(plan.config, plan.model_path)
    on_device = use_device(plan.config)
    slide = open_slide(plan.slide_path, plan.reader)
    codec = numcodecs.Zstd(level=3)
    sampling = grid.level0_sampling()
    summaries = []
    try:
        for tile in tiles:
            t0 = time.perf_counter()
            rgb = read_tile(slide, grid, tile)
            t1 = time.perf_counter()
            labels, prob, h_map, seconds = segment_window(
                rgb, model, plan.thresholds, plan.stain, grid.model_input_side, on_device,
                want_prob=plan.config.save_probabilities,
            )
            n_nuclei, written = write_tile_outputs(plan, tile, labels, h_map, prob, sampling, codec)
            summaries.append(TileSummary(tile, n_nuclei, {"read": t1 - t0, **seconds, **written}))
    finally:
        slide.close()
    return summaries


def write_tile_outputs(
    plan: SlidePlan, tile: Tile, labels: np.ndarray, h_map: np.ndarray, prob: np.ndarray | None,
    sampling: np.ndarray, codec: Any,
) -> tuple[int, dict[str, float]]:
    """A segmented tile's owned nuclei (cut at the slide's edge) → its scratch table and level-0
    label window (and the probability chunk when given). Returns the number of nuclei and seconds
    for features / write."""
    t0 = time.perf_counter()
    labels = cut_at_slide_edge(labels, plan.grid, tile, plan.thresholds.min_area_px)
    table, local = tile_nuclei(labels, h_map, plan.grid, tile, plan.mpp)
    t1 = time.perf_counter()
    owned = local[labels]
    if plan.grid.model_side != plan.grid.extent0:  # resampled: back onto the level-0 grid
        owned = owned[np.ix_(sampling, sampling)]
    atomic_write_bytes(tile_file(plan, tile, ".labels.zst"), codec.encode(np.ascontiguousarray(owned)), durable=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(tile_file(plan, tile, ".parquet"), sink.getvalue().to_pybytes(), durable=False)
    if prob is not None:
        write_probability_chunk(plan, tile, prob, sampling)
    return table.num_rows, {"features": t1 - t0, "write": time.perf_counter() - t1}


def write_probability_chunk(plan: SlidePlan, tile: Tile, prob: np.ndarray, sampling: np.ndarray) -> None:
    grid = plan.grid
    x0, y0, x1, y1 = grid.core(*tile)
    h = grid.halo0
    level0 = prob[:, sampling][:, :, sampling][:, h : h + (y1 - y0), h : h + (x1 - x0)]
    maps = open_maps(Path(plan.work_dir))
    maps["probabilities"][:, y0:y1, x0:x1] = np.round(level0 * 255).astype(np.uint8)


# --------------------------------------------------------------------- label maps ----

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


def assemble_labels(plan: SlidePlan, chunks: list[Tile], summaries: list[list[TileSummary]]) -> int:
    """Write the label-map chunks ``chunks`` (one per tile core) from the owned-nucleus windows of
    the tile and its eight neighbours; the tile's own nuclei take precedence. Returns chunks written."""
    import numcodecs

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

    written = 0
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
            written += 1
    return written


# ------------------------------------------------------------------------- reduce ----

def nucleus_tables(plan: SlidePlan, offsets: dict[Tile, int]):  # type: ignore[no-untyped-def]
    """The owned-nucleus tables of all tiles in raster order, with global ids."""
    for tile in plan.tiles:
        path = tile_file(plan, tile, ".parquet")
        if not path.exists():
            continue
        table = pq.read_table(path)
        ids = np.asarray(table.column("id"), dtype=np.uint32) + np.uint32(offsets[tile])
        yield table.set_column(0, "id", pa.array(ids, type=pa.uint32()))


def slide_stats(plan: SlidePlan, areas_um2: np.ndarray, n_tiles: int, seconds: float,
                timings: dict[str, float]) -> dict[str, Any]:
    n = int(areas_um2.size)
    mean = float(areas_um2.mean()) if n else None
    std = float(areas_um2.std()) if n else None
    px40 = MPP_40X**2
    return {
        "slide_id": plan.slide_id,
        "cancer_type": plan.cancer_type,
        "slide_path": plan.slide_path,
        "status": "ok",
        "error": None,
        "reader": plan.reader,
        "width": plan.width,
        "height": plan.height,
        "mpp": plan.mpp,
        "mpp_source": plan.mpp_source,
        "tissue_mm2": round(plan.tissue_mm2, 4),
        "n_nuclei": n,
        "area_mean_um2": mean,
        "area_std_um2": std,
        "area_mean_px40x": mean / px40 if mean is not None else None,
        "area_std_px40x": std / px40 if std is not None else None,
        "nuclei_per_mm2": n / plan.tissue_mm2 if plan.tissue_mm2 > 0 else None,
        "n_tiles": n_tiles,
        "seconds": round(seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
        "model_sha256": plan.model_sha256,
        "tile_core_px": plan.grid.core0,
        "tile_halo_px": plan.grid.halo0,
    }


def reduce_slide(plan: SlidePlan, summaries: list[list[TileSummary]], assembled: list[int]) -> dict[str, Any]:
    """Write the slide's nucleus tables and stats.json, drop the scratch files and publish the
    folder under its final name. Returns the stats."""
    work = Path(plan.work_dir)
    offsets = label_offsets(plan, summaries)
    n = write_nucleus_tables(nucleus_tables(plan, offsets), work, geojson=plan.config.write_geojson)
    areas = (
        pq.read_table(work / "nuclei.parquet", columns=["area_um2"]).column(0).to_numpy()
        if n
        else np.zeros(0)
    )
    timings: dict[str, float] = {}
    for batch in summaries:
        for s in batch:
            for k, v in s.seconds.items():
                timings[k] = timings.get(k, 0.0) + v
    stats = slide_stats(plan, areas, len(plan.tiles), time.time() - plan.started, timings)
    shutil.rmtree(work / "tiles", ignore_errors=True)
    atomic_write_json(work / STATS_FILE, stats)
    publish_slide(work, final_slide_dir(Path(plan.out_dir), plan.slide_id))
    del assembled
    return stats


def failure_stats(entry: SlideEntry, error: str, seconds: float = 0.0) -> dict[str, Any]:
    """stats.json of a slide that could not be processed."""
    return {
        "slide_id": entry.slide_id,
        "cancer_type": entry.cancer_type,
        "slide_path": str(entry.slide_path),
        "status": "failed",
        "error": error,
        "reader": None,
        "width": None,
        "height": None,
        "mpp": None,
        "mpp_source": None,
        "tissue_mm2": None,
        "n_nuclei": None,
        "area_mean_um2": None,
        "area_std_um2": None,
        "area_mean_px40x": None,
        "area_std_px40x": None,
        "nuclei_per_mm2": None,
        "n_tiles": None,
        "seconds": round(seconds, 3),
        "model_sha256": None,
    }


def batches(tiles: tuple[Tile, ...], size: int) -> list[list[Tile]]:
    return [list(tiles[i : i + size]) for i in range(0, len(tiles), size)]


def bands(chunks: list[Tile], rows_per_band: int) -> list[list[Tile]]:
    """Group label chunks into bands of tile rows (one assembly task per band)."""
    out: dict[int, list[Tile]] = {}
    for r, c in chunks:
        out.setdefault(r // rows_per_band, []).append((r, c))
    return [out[k] for k in sorted(out)]


def finish_inline(plan: SlidePlan) -> dict[str, Any]:
    """Segment, assemble and reduce a planned slide in this process."""
    summaries = [segment_tiles(plan, b) for b in batches(plan.tiles, plan.config.tiles_per_task)]
    assembled = [assemble_labels(plan, chunks_to_assemble(plan), summaries)]
    return reduce_slide(plan, summaries, assembled)


def process_slide_inline(entry: SlideEntry, out_dir: str, config: Config) -> dict[str, Any]:
    """The whole slide in this process, without Dask (predict, tests, debugging)."""
    return finish_inline(plan_slide(entry, out_dir, config))


def start_slide(entry: SlideEntry, out_dir: str, config: Config) -> SlidePlan | dict[str, Any]:
    """Plan a slide; a slide small enough for one task (≤ ``tiles_per_task`` tiles) is finished
    in the same task and its stats returned, saving the scheduler four tasks and a round trip."""
    plan = plan_slide(entry, out_dir, config)
    if len(plan.tiles) <= config.tiles_per_task:
        return finish_inline(plan)
    return plan


