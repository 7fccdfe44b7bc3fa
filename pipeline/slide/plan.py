"""Planning a slide: open it, find its tissue on a low-resolution view, compute its stain
statistics once, lay the tile grid over the tissue and create its working folder.

The :class:`SlidePlan` it returns is all the later stages (``segment``, ``assemble``,
``reduce``) need to know about the slide; it is small and shipped to every task.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.io.outputs.maps import create_maps
from pipeline.io.outputs.publish import new_partial_dir, remove_stale_partials
from pipeline.io.readers import Slide, choose_reader, low_resolution_view, open_slide
from pipeline.kernels.nuclei import NucleusThresholds
from pipeline.kernels.stain import MacenkoStains, StainStats, macenko_stains, reinhard_stats
from pipeline.kernels.tissue import tissue_mask
from pipeline.manifest import SlideEntry
from pipeline.runtime import CPU_DEVICE_ID, NucleusModel, load_model
from pipeline.slide.inputs import slide_inputs
from pipeline.tiling import TileGrid, derive_halo_px

Tile = tuple[int, int]


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
    inputs: dict[str, Any] = field(default_factory=dict)  # what determines the outputs (slide.inputs)


@dataclass(frozen=True)
class TileSummary:
    tile: Tile
    n_nuclei: int
    seconds: dict[str, float]


def model_threads(config: Config) -> int:
    return config.intra_op_threads or 1


def model_for(config: Config, path: str | None = None) -> NucleusModel:
    """This process's session for the configured model (created once, then reused). With
    ``device="cpu"`` inference stays on the CPU too, whatever GPUs the node has."""
    cpu = config.device == "cpu"
    return load_model(
        path or config.model or None,
        model_threads(config),
        runtime=config.runtime,
        device_id=CPU_DEVICE_ID if cpu else 0,
        half=config.half and not cpu,
        trt_cache_dir=config.trt_cache_dir or None,
    )


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
    with open_slide(entry.slide_path, reader) as slide:
        width, height = slide.level_dimensions[0]
        mpp, mpp_source = resolve_mpp(entry, slide, config)
        model = model_for(config)
        view, view_ds = low_resolution_view(slide, config.tissue_view_px)
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
        inputs=slide_inputs(entry.slide_path, entry.mpp, model.sha256, config),
    )


def tile_file(plan: SlidePlan, tile: Tile, suffix: str) -> Path:
    return Path(plan.work_dir) / "tiles" / f"r{tile[0]:05d}_c{tile[1]:05d}{suffix}"


def batches(tiles: tuple[Tile, ...], size: int) -> list[list[Tile]]:
    return [list(tiles[i : i + size]) for i in range(0, len(tiles), size)]


def bands(chunks: list[Tile], rows_per_band: int) -> list[list[Tile]]:
    """Group label chunks into bands of tile rows (one assembly task per band)."""
    out: dict[int, list[Tile]] = {}
    for r, c in chunks:
        out.setdefault(r // rows_per_band, []).append((r, c))
    return [out[k] for k in sorted(out)]
