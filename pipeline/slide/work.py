"""A slide's work as its stages share it: the :class:`SlidePlan` record shipped to every task, its
tiles and their scratch files, the batches and bands tasks take them in, and this process's model
session. Planning (``plan``) makes the record; ``segment``, ``assemble`` and ``reduce`` read it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.io.outputs.publish import scratch_dir
from pipeline.io.readers import UnreadableTile
from pipeline.kernels.nuclei import NucleusThresholds
from pipeline.kernels.stain import MacenkoStains, StainStats
from pipeline.runtime import CPU_DEVICE_ID, NucleusModel, load_model
from pipeline.slide.scale import ScaleEstimate
from pipeline.tiling import TileGrid

Tile = tuple[int, int]

ARTIFACT_MASK_FILE = "artifacts.npy"  # packed bits of the low-resolution view: pixels excluded (ink, folds)


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
    mpp_field: str | None
    mpp_estimate: ScaleEstimate | None
    flags: tuple[str, ...]
    warnings: tuple[str, ...]
    grid: TileGrid
    tiles: tuple[Tile, ...]
    stain: StainStats | MacenkoStains | None
    tissue_mm2: float
    artifact_mm2: dict[str, float]
    artifact_view: tuple[int, int, float] | None  # (rows, columns, downsample) of the excluded-pixel mask
    work_dir: str
    out_dir: str
    model_path: str
    model_sha256: str
    thresholds: NucleusThresholds
    config: Config
    started: float = field(default_factory=time.time)
    inputs: dict[str, Any] = field(default_factory=dict)  # what determines the outputs (slide.inputs)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # planning: plan, tissue_view, scale
    unreadable_view: tuple[UnreadableTile, ...] = ()  # tiles of the view's level that could not be decoded
    view_level_px: int = 0  # pixels of the level the view was read from (the share lost to unreadable tiles)
    # (rows, columns, downsample) of the view whose tissue the scale check samples, while the
    # estimate's cross-check of a stated resolution is still to be made (check_slide_scale); else None
    scale_check_view: tuple[int, int, float] | None = None


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


def tile_file(plan: SlidePlan, tile: Tile, suffix: str) -> Path:
    return scratch_dir(Path(plan.work_dir)) / f"r{tile[0]:05d}_c{tile[1]:05d}{suffix}"


def batches(tiles: tuple[Tile, ...], size: int) -> list[list[Tile]]:
    return [list(tiles[i : i + size]) for i in range(0, len(tiles), size)]


def bands(chunks: list[Tile], rows_per_band: int) -> list[list[Tile]]:
    """Group label chunks into bands of tile rows (one assembly task per band)."""
    out: dict[int, list[Tile]] = {}
    for r, c in chunks:
        out.setdefault(r // rows_per_band, []).append((r, c))
    return [out[k] for k in sorted(out)]
