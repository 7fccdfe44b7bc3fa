"""Reducing a slide: its tiles' nucleus tables become the slide's nucleus tables
(``nuclei.parquet``; on request ``nuclei.csv``, ``nuclei.geojson``) with global ids, the maps' lower
pyramid levels are built from level 0, its statistics ``stats.json``; the scratch files go and
the folder is published under its final name."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.outputs.contents import folder_contents
from pipeline.io.outputs.maps import build_pyramid
from pipeline.io.outputs.publish import atomic_write_json, final_slide_dir, publish_slide, scratch_dir
from pipeline.io.outputs.stats import STATS_FILE, SlideStats, nucleus_size_stats
from pipeline.io.outputs.status import SlideStatus
from pipeline.io.outputs.tables import run_formats, write_nucleus_tables
from pipeline.io.readers import SlideError
from pipeline.io.readers.base import MAX_TILES_NAMED
from pipeline.slide.assemble import label_offsets
from pipeline.slide.plausibility import IMPLAUSIBLE_FLAG, implausible_nuclei
from pipeline.slide.scale import ScaleCheck
from pipeline.slide.segment import UNREADABLE_SUFFIX
from pipeline.slide.work import SlidePlan, Tile, TileSummary, tile_file


def nucleus_tables(plan: SlidePlan, offsets: dict[Tile, int]) -> Iterator[pa.Table]:
    """The owned-nucleus tables of all tiles in raster order, with global ids."""
    for tile in plan.tiles:
        path = tile_file(plan, tile, ".parquet")
        if not path.exists():
            continue
        table = pq.read_table(path)
        ids = np.asarray(table.column("id"), dtype=np.uint32) + np.uint32(offsets[tile])
        yield table.set_column(0, "id", pa.array(ids, type=pa.uint32()))


# A slide with tiles its decoder rejects finishes without them (listed, flagged, the rest kept: a
# cohort would rather have 99.9 % of a slide than none of it) while they are at most this share of
# its segmentation tiles, or of the level its tissue view was read from; past it, what is left is
# no longer a measurement of the slide, and it fails naming the tiles. A judgement, not a measurement.
MAX_UNREADABLE_SHARE = 0.1
UNREADABLE_FLAG = "unreadable_tiles"


@dataclass(frozen=True)
class UnreadableSummary:
    """The file's tiles a slide could not decode, and what that cost it."""

    tiles: list[dict[str, Any]]  # UnreadableTile.as_dict(): the view's level, then level 0
    segmented_share: float  # share of the segmented area (the tiles' cores) left unread
    view_share: float  # share of the view's level seen as glass

    def note(self) -> str:
        first = self.tiles[0]
        where = f"level {first['level']}, x {first['x']}, y {first['y']}"
        return (
            f"{len(self.tiles)} tile(s) of the file cannot be decoded (first at {where}: {first['error']}); "
            f"excluded as glass: {self.segmented_share:.2%} of the segmented area, {self.view_share:.2%} of the "
            "tissue view (listed in unreadable_tiles)"
        )


def unreadable_summary(plan: SlidePlan) -> UnreadableSummary | None:
    """The unreadable tiles met by planning and by the tile tasks (read before the scratch files
    go); a SlideError naming them when they cost more than ``MAX_UNREADABLE_SHARE``."""
    view = [t.as_dict() for t in plan.unreadable_view]
    level0: list[dict[str, Any]] = []
    for tile in plan.tiles:
        path = tile_file(plan, tile, UNREADABLE_SUFFIX)
        if path.exists():
            level0.extend(t for t in json.loads(path.read_text()) if t not in level0)
    tiles = view + [t for t in level0 if t not in view]
    if not tiles:
        return None
    segmented_px = len(plan.tiles) * plan.grid.core0**2
    summary = UnreadableSummary(
        tiles,
        sum(t["width"] * t["height"] for t in level0) / segmented_px if segmented_px else 0.0,
        sum(t["width"] * t["height"] for t in view) / plan.view_level_px if plan.view_level_px else 0.0,
    )
    if max(summary.segmented_share, summary.view_share) > MAX_UNREADABLE_SHARE:
        named = "; ".join(f"level {t['level']}, x {t['x']}, y {t['y']}" for t in tiles[:MAX_TILES_NAMED])
        named += " …" if len(tiles) > MAX_TILES_NAMED else ""
        raise SlideError(
            f"{len(tiles)} tile(s) of the file cannot be decoded ({named}: {tiles[0]['error']}): "
            f"{summary.segmented_share:.1%} of the segmented area and {summary.view_share:.1%} of the tissue "
            f"view unread, over the {MAX_UNREADABLE_SHARE:.0%} a slide may lose"
        )
    return summary


def slide_stats(
    plan: SlidePlan,
    areas_um2: np.ndarray,
    n_tiles: int,
    seconds: float,
    timings: dict[str, float],
    outputs: dict[str, dict[str, Any]] | None = None,
    unreadable: UnreadableSummary | None = None,
    scale_check: ScaleCheck | None = None,
) -> dict[str, Any]:
    """stats.json of a finished slide.

    Parameters
    ----------
    plan : SlidePlan
        The slide's plan (its identity, scale, tissue area, flags and notes so far).
    areas_um2 : np.ndarray
        Area of every nucleus of the slide, in µm².
    n_tiles : int
        Number of tiles segmented.
    seconds : float
        Wall-clock seconds since the slide was started.
    timings : dict of str to float
        Thread-seconds per stage.
    outputs : dict or None, optional
        The published folder's contents (file name → size and checksum); None leaves it out.
    unreadable : UnreadableSummary or None, optional
        The tiles of the file that could not be decoded; None when there were none.
    scale_check : ScaleCheck or None, optional
        The cross-check of a stated resolution made beside the tiles; its estimate, flags and
        notes replace or join the plan's.

    Returns
    -------
    dict
        The content of stats.json (``SlideStats.as_dict``), with status ``"ok"``.
    """
    flags, warnings = list(plan.flags), list(plan.warnings)
    estimate = plan.mpp_estimate
    if scale_check is not None:
        flags += scale_check.flags
        warnings += scale_check.warnings
        estimate = scale_check.estimate
    if unreadable is not None:
        flags.append(UNREADABLE_FLAG)
        warnings.append(unreadable.note())
    sizes = nucleus_size_stats(areas_um2, plan.tissue_mm2)
    implausible = implausible_nuclei(sizes["n_nuclei"], plan.tissue_mm2, sizes["area_mean_um2"])
    if implausible is not None:
        flags.append(IMPLAUSIBLE_FLAG)
        warnings.append(
            f"{implausible}: no H&E tissue yields this; the model's output or the slide's resolution "
            f"({plan.mpp:.3g} µm/px from {plan.mpp_source}) is wrong"
        )
    return SlideStats(
        slide_id=plan.slide_id,
        cancer_type=plan.cancer_type,
        slide_path=plan.slide_path,
        status=SlideStatus.OK,
        reader=plan.reader,
        width=plan.width,
        height=plan.height,
        mpp=plan.mpp,
        mpp_source=plan.mpp_source,
        mpp_field=plan.mpp_field,
        **(estimate.as_stats() if estimate else {}),
        flags=flags,
        warnings=warnings,
        tissue_mm2=round(plan.tissue_mm2, 4),
        artifact_mm2=plan.artifact_mm2,
        unreadable_tiles=unreadable.tiles if unreadable is not None else None,
        **sizes,
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
    plan: SlidePlan,
    summaries: list[list[TileSummary]],
    assembled: list[dict[str, float]],
    scale_check: ScaleCheck | None = None,
) -> dict[str, Any]:
    """Write the slide's nucleus tables and stats.json, drop the scratch files and publish the
    folder under its final name. Returns the stats.

    ``scale_check``: the cross-check of a stated resolution made beside the tiles
    (``plan.check_slide_scale``), whose estimate, flags and notes join the slide's.
    ``stage_seconds`` sums every stage's thread-seconds: planning (``plan``, ``tissue_view``, ``scale``
    with the cross-check), the tiles' (``read`` … ``write``), ``assemble``, the maps' ``pyramid`` and the
    rest of this ``reduce`` (up to writing stats.json).

    Parameters
    ----------
    plan : SlidePlan
        The slide's plan.
    summaries : list of list of TileSummary
        What each batch of tiles returned (nuclei found and seconds per stage).
    assembled : list of dict of str to float
        Seconds per stage of each band of the label assembly.
    scale_check : ScaleCheck or None, optional
        The deferred cross-check of the stated resolution; required when the plan asked for one.

    Returns
    -------
    dict
        The slide's stats, as written to stats.json.

    Raises
    ------
    ValueError
        When the plan's scale check is pending and ``scale_check`` is None.
    """
    if plan.scale_check_view is not None and scale_check is None:
        raise ValueError(f"{plan.slide_id}: the plan's scale check was not made (plan.check_slide_scale)")
    started = time.perf_counter()
    work = Path(plan.work_dir)
    unreadable = unreadable_summary(plan)
    offsets = label_offsets(plan, summaries)
    n = write_nucleus_tables(nucleus_tables(plan, offsets), work, plan.slide_id, run_formats(plan.config))
    areas = pq.read_table(work / "nuclei.parquet", columns=["area_um2"]).column(0).to_numpy() if n else np.zeros(0)
    timings: dict[str, float] = dict(plan.stage_seconds)
    if scale_check is not None:
        timings["scale"] = timings.get("scale", 0.0) + scale_check.seconds
    for part in [s.seconds for batch in summaries for s in batch] + list(assembled):
        for k, v in part.items():
            timings[k] = timings.get(k, 0.0) + v
    pyramid_started = time.perf_counter()
    build_pyramid(work)
    timings["pyramid"] = time.perf_counter() - pyramid_started
    outputs = folder_contents(work)
    timings["reduce"] = time.perf_counter() - started - timings["pyramid"]
    stats = slide_stats(
        plan, areas, len(plan.tiles), time.time() - plan.started, timings, outputs, unreadable, scale_check
    )
    atomic_write_json(work / STATS_FILE, stats)
    publish_slide(work, final_slide_dir(Path(plan.out_dir), plan.slide_id))
    # dropped only now: a reduction ended before the rename above (its worker killed) is run again
    # by the scheduler, and needs them
    shutil.rmtree(scratch_dir(work), ignore_errors=True)
    return stats
