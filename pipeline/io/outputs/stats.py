"""``stats.json``: one schema for every slide of a run, finished or failed.

The pipeline writes it (``pipeline.slide.reduce`` for a finished slide, ``pipeline.graph`` for a
failed one), the QC reads it (``pipeline.qc``), and the generated cohorts of the tests and
benchmarks (``pipeline.testing``) build it, all from :class:`SlideStats`, so the three cannot
drift apart. A failed slide carries the same keys, with null where nothing was measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, get_type_hints

import numpy as np

from pipeline.io.outputs.status import SlideStatus

STATS_FILE = "stats.json"
# The paper reports nucleus areas in pixels at 40x, i.e. at 0.25 µm/px.
MPP_40X = 0.25


@dataclass(frozen=True)
class SlideStats:
    """The contents of one slide's stats.json, in the order they are written."""

    slide_id: str
    cancer_type: str
    slide_path: str
    status: str  # a SlideStatus: ok | failed
    error: str | None = None
    reader: str | None = None
    width: int | None = None
    height: int | None = None
    mpp: float | None = None
    mpp_source: str | None = None  # manifest | slide | estimate | default
    mpp_field: str | None = None  # the metadata field (or manifest column) the resolution was read from
    mpp_estimate: float | None = None  # resolution estimated from the slide's own nuclei
    mpp_estimate_confidence: float | None = None  # share of sample windows agreeing with it within 1.25×
    flags: list[str] | None = None  # e.g. low_resolution, scale_disagreement, mpp_default, artifacts
    warnings: list[str] | None = None  # what a person should know about this slide's result, in words
    tissue_mm2: float | None = None
    artifact_mm2: dict[str, float] | None = None  # area excluded from segmentation, by kind (pen ink, ...)
    # tiles of the file its decoder rejects (level, x, y, width, height in that level's px, error),
    # excluded from the slide's tissue and nuclei (flag ``unreadable_tiles``); null when there are none
    unreadable_tiles: list[dict[str, Any]] | None = None
    n_nuclei: int | None = None
    area_mean_um2: float | None = None
    area_std_um2: float | None = None
    area_mean_px40x: float | None = None
    area_std_px40x: float | None = None
    nuclei_per_mm2: float | None = None
    n_tiles: int | None = None
    seconds: float | None = None
    stage_seconds: dict[str, float] | None = None
    model_sha256: str | None = None
    tile_core_px: int | None = None
    tile_halo_px: int | None = None
    # what determined the outputs (slide file size and mtime, the manifest's mpp, model sha256,
    # the settings in config.OUTPUT_FIELDS) and what the published folder holds (size and sha256
    # per file, per folder): a rerun skips the slide only while both still check out
    inputs: dict[str, Any] | None = None
    outputs: dict[str, dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields by kind, for readers of many stats.json files (the QC's cohort table).
STATS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SlideStats))
_STATS_TYPES = get_type_hints(SlideStats)
NUMERIC_FIELDS: tuple[str, ...] = tuple(
    name for name in STATS_FIELDS if _STATS_TYPES[name] in (int | None, float | None)
)
TEXT_FIELDS: tuple[str, ...] = tuple(name for name in STATS_FIELDS if _STATS_TYPES[name] in (str, str | None))


def nucleus_size_stats(areas_um2: np.ndarray, tissue_mm2: float) -> dict[str, Any]:
    """Count, mean and standard deviation of nucleus areas (µm² and 40x px) and density.

    >>> s = nucleus_size_stats(np.array([20.0, 30.0]), tissue_mm2=0.5)
    >>> s["n_nuclei"], s["area_mean_um2"], s["area_mean_px40x"], s["nuclei_per_mm2"]
    (2, 25.0, 400.0, 4.0)
    """
    n = int(areas_um2.size)
    mean = float(areas_um2.mean()) if n else None
    std = float(areas_um2.std()) if n else None
    px40 = MPP_40X**2
    return {
        "n_nuclei": n,
        "area_mean_um2": mean,
        "area_std_um2": std,
        "area_mean_px40x": mean / px40 if mean is not None else None,
        "area_std_px40x": std / px40 if std is not None else None,
        "nuclei_per_mm2": n / tissue_mm2 if tissue_mm2 > 0 else None,
    }


def failure_stats(slide_id: str, cancer_type: str, slide_path: str, error: str, seconds: float = 0.0) -> dict[str, Any]:
    """stats.json of a slide that could not be processed: the same keys, null where nothing was measured.

    Parameters
    ----------
    slide_id : str
        The slide's id.
    cancer_type : str
        Its cancer type, from the manifest.
    slide_path : str
        Its file.
    error : str
        Why it could not be processed.
    seconds : float, optional
        Seconds spent on it.

    Returns
    -------
    dict
        The content of stats.json, keys in ``STATS_FIELDS`` order, status ``"failed"``.

    Examples
    --------
    >>> s = failure_stats("S1", "BRCA", "S1.svs", "S1.svs: unreadable")
    >>> s["status"] == SlideStatus.FAILED, s["n_nuclei"], list(s) == list(STATS_FIELDS)
    (True, None, True)
    """
    return SlideStats(
        slide_id=slide_id,
        cancer_type=cancer_type,
        slide_path=slide_path,
        status=SlideStatus.FAILED,
        error=error,
        seconds=round(seconds, 3),
    ).as_dict()
