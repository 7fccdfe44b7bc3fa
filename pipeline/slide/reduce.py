"""Reducing a slide: its tiles' nucleus tables become the slide's nucleus tables
(``nuclei.parquet``, ``nuclei.csv``, ``nuclei.geojson``) with global ids, its statistics
``stats.json``; the scratch files go and the folder is published under its final name."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.outputs.contents import folder_contents
from pipeline.io.outputs.publish import atomic_write_json, final_slide_dir, publish_slide, scratch_dir
from pipeline.io.outputs.stats import STATS_FILE, SlideStats, nucleus_size_stats
from pipeline.io.outputs.tables import NUCLEUS_TABLE_FORMATS, write_nucleus_tables
from pipeline.slide.assemble import label_offsets
from pipeline.slide.plan import SlidePlan, Tile, TileSummary, tile_file


def nucleus_tables(plan: SlidePlan, offsets: dict[Tile, int]) -> Iterator[pa.Table]:
    """The owned-nucleus tables of all tiles in raster order, with global ids."""
    for tile in plan.tiles:
        path = tile_file(plan, tile, ".parquet")
        if not path.exists():
            continue
        table = pq.read_table(path)
        ids = np.asarray(table.column("id"), dtype=np.uint32) + np.uint32(offsets[tile])
        yield table.set_column(0, "id", pa.array(ids, type=pa.uint32()))


def slide_stats(
    plan: SlidePlan,
    areas_um2: np.ndarray,
    n_tiles: int,
    seconds: float,
    timings: dict[str, float],
    outputs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """stats.json of a finished slide."""
    return SlideStats(
        slide_id=plan.slide_id,
        cancer_type=plan.cancer_type,
        slide_path=plan.slide_path,
        status="ok",
        reader=plan.reader,
        width=plan.width,
        height=plan.height,
        mpp=plan.mpp,
        mpp_source=plan.mpp_source,
        mpp_field=plan.mpp_field,
        **(plan.mpp_estimate.as_stats() if plan.mpp_estimate else {}),
        flags=list(plan.flags),
        warnings=list(plan.warnings),
        tissue_mm2=round(plan.tissue_mm2, 4),
        artifact_mm2=plan.artifact_mm2,
        **nucleus_size_stats(areas_um2, plan.tissue_mm2),
        n_tiles=n_tiles,
        seconds=round(seconds, 3),
        stage_seconds={k: round(v, 3) for k, v in timings.items()},
        model_sha256=plan.model_sha256,
        tile_core_px=plan.grid.core0,
        tile_halo_px=plan.grid.halo0,
        inputs=plan.inputs or None,
        outputs=outputs,
    ).as_dict()


def reduce_slide(
    plan: SlidePlan, summaries: list[list[TileSummary]], assembled: list[dict[str, float]]
) -> dict[str, Any]:
    """Write the slide's nucleus tables and stats.json, drop the scratch files and publish the
    folder under its final name. Returns the stats.

    ``stage_seconds`` sums every stage's thread-seconds: planning (``plan``, ``tissue_view``, ``scale``), the
    tiles' (``read`` … ``write``), ``assemble`` and this ``reduce`` (up to writing stats.json)."""
    started = time.perf_counter()
    work = Path(plan.work_dir)
    offsets = label_offsets(plan, summaries)
    formats = [f for f in NUCLEUS_TABLE_FORMATS if f != "geojson" or plan.config.write_geojson]
    n = write_nucleus_tables(nucleus_tables(plan, offsets), work, formats)
    areas = pq.read_table(work / "nuclei.parquet", columns=["area_um2"]).column(0).to_numpy() if n else np.zeros(0)
    timings: dict[str, float] = dict(plan.stage_seconds)
    for part in [s.seconds for batch in summaries for s in batch] + list(assembled):
        for k, v in part.items():
            timings[k] = timings.get(k, 0.0) + v
    outputs = folder_contents(work)
    timings["reduce"] = time.perf_counter() - started
    stats = slide_stats(plan, areas, len(plan.tiles), time.time() - plan.started, timings, outputs)
    atomic_write_json(work / STATS_FILE, stats)
    publish_slide(work, final_slide_dir(Path(plan.out_dir), plan.slide_id))
    # dropped only now: a reduction ended before the rename above (its worker killed) is run again
    # by the scheduler, and needs them
    shutil.rmtree(scratch_dir(work), ignore_errors=True)
    return stats
