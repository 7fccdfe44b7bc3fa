"""Generated run folders for the QC's tests and benchmark (no real slides needed).

``synthetic_stats_cohort`` writes ``DIR/slides/<id>/stats.json`` for cancer types of given sizes and
plants, per type and per examined tail, exactly as many outliers as the outer-percent cut
selects (``k``), so that exactly the planted slides must be selected. ``synthetic_png_slide``
draws a small H&E-like PNG (a tissue blob with nuclei) and its ``nuclei.parquet``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.outputs.publish import atomic_path
from pipeline.io.outputs.stats import MPP_40X, STATS_FILE, SlideStats, failure_stats
from pipeline.io.outputs.status import RunStatus, SlideStatus
from pipeline.qc._rules import STATISTICS, selection_note, tail_size

# Normal and planted ranges (40x px for sizes); planted values lie far outside the normal ones.
NORMAL = {"n_nuclei": (200_000, 800_000), "area_mean_px40x": (180.0, 260.0), "area_std_px40x": (60.0, 100.0)}
PLANTED = {
    ("n_nuclei", "low"): (1_000, 20_000),
    ("n_nuclei", "high"): (3_000_000, 5_000_000),
    ("area_mean_px40x", "low"): (60.0, 90.0),
    ("area_mean_px40x", "high"): (500.0, 700.0),
    ("area_std_px40x", "high"): (250.0, 400.0),
}


def _stats(slide_id: str, ctype: str, slide_path: str, values: dict[str, float], mpp: float) -> dict[str, Any]:
    n = int(values["n_nuclei"])
    mean_px, std_px = values["area_mean_px40x"], values["area_std_px40x"]
    um2 = MPP_40X**2
    tissue = 50.0
    return SlideStats(
        slide_id=slide_id,
        cancer_type=ctype,
        slide_path=slide_path,
        status=SlideStatus.OK,
        reader="synthetic",
        width=100_000,
        height=80_000,
        mpp=mpp,
        tissue_mm2=tissue,
        n_nuclei=n,
        area_mean_um2=mean_px * um2,
        area_std_um2=std_px * um2,
        area_mean_px40x=mean_px,
        area_std_px40x=std_px,
        nuclei_per_mm2=n / tissue,
        n_tiles=100,
        seconds=60.0,
        model_sha256="0" * 64,
    ).as_dict()


def write_stats(out_dir: Path, stats: dict[str, Any]) -> Path:
    """Publish one slide folder the way the pipeline does: temporary dot-name, then rename."""
    slides = Path(out_dir) / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    final = slides / stats["slide_id"]
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / STATS_FILE).write_text(json.dumps(stats), encoding="utf-8")
    return final


def write_run_record(out_dir: Path, status: str = RunStatus.OK) -> None:
    """The ``run.json`` a finished run leaves beside ``slides/`` (what ``python -m pipeline.qc``
    looks for to know a run's output folder)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "run.json").write_text(json.dumps({"status": status, "slides": {}}), encoding="utf-8")


def synthetic_stats_cohort(
    out_dir: Path,
    sizes: dict[str, int],
    outer_percent: float = 2.0,
    seed: int = 0,
    n_failed: int = 1,
    slide_path: str = "/nonexistent/slide.svs",
    mpp: float = 0.25,
) -> dict[str, list[str]]:
    """Write a cohort's stats.json files with planted outliers, and a finished run's run.json.

    Parameters
    ----------
    sizes : cancer type → number of ok slides.
    n_failed : failed slides added per cancer type (not counted in ``sizes``).

    Returns
    -------
    slide id → the Notes the QC must give it (empty list: must not be selected). Each type also
    gets one slide with a tiny size spread, which must *not* be selected (paper).
    """
    rng = np.random.default_rng(seed)
    expected: dict[str, list[str]] = {}
    for t, (ctype, n) in enumerate(sorted(sizes.items())):
        k = tail_size(n, outer_percent)
        plan: list[tuple[str, str] | None] = []
        for stat in STATISTICS:
            for tail in stat.tails:
                plan += [(stat.field, tail)] * k
        if len(plan) + 1 > n:
            raise ValueError(f"{ctype}: {n} slides cannot hold {len(plan)} planted outliers")
        plan += [None] * (n - len(plan))
        for i, planted in enumerate(plan):
            sid = f"{ctype}-{i:05d}"
            values = {f: float(rng.uniform(*NORMAL[f])) for f in NORMAL}
            notes: list[str] = []
            if planted is not None:
                lo, hi = PLANTED[planted]
                values[planted[0]] = float(rng.uniform(lo, hi))
                column = next(s.column for s in STATISTICS if s.field == planted[0])
                notes.append(selection_note(column, planted[1], outer_percent))
            elif i == len(plan) - 1:
                values["area_std_px40x"] = 5.0  # small spread alone is not a flag (paper)
            values["n_nuclei"] = float(round(values["n_nuclei"]))
            write_stats(out_dir, _stats(sid, ctype, slide_path, values, mpp))
            expected[sid] = notes
        for j in range(n_failed):
            sid = f"{ctype}-F{j:03d}"
            write_stats(out_dir, failure_stats(sid, ctype, slide_path, f"unreadable slide {t}.{j}: truncated JPEG"))
            expected[sid] = []
    write_run_record(out_dir)
    return expected


def synthetic_png_slide(path: Path, size: tuple[int, int] = (1200, 900), seed: int = 0) -> list[np.ndarray]:
    """Draw an H&E-like PNG: white glass, a pink tissue ellipse in the middle with dark nuclei.

    Returns the nuclei outlines (level-0 (x, y) polygons, 16 vertices each).
    """
    from PIL import Image, ImageDraw

    w, h = size
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    box = (w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    draw.ellipse(box, fill=(228, 150, 196))
    cx, cy, ax, ay = w / 2, h / 2, w * 0.3, h * 0.3
    polygons: list[np.ndarray] = []
    angles = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    while len(polygons) < 300:
        x, y = rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3])
        if ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 > 0.85:
            continue
        r = rng.uniform(5, 9)
        poly = np.stack([x + r * np.cos(angles), y + r * np.sin(angles)], axis=1)
        draw.polygon([tuple(p) for p in poly], fill=(90, 50, 140))
        polygons.append(poly)
    img.save(path)
    return polygons


def tissue_box(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The (cx, cy, ax, ay) ellipse of ``synthetic_png_slide``'s tissue."""
    w, h = size
    return w / 2, h / 2, w * 0.3, h * 0.3


def write_nuclei_parquet(path: Path, polygons: list[np.ndarray], mpp: float = MPP_40X) -> None:
    """nuclei.parquet (GeoParquet, as the pipeline writes it) for the given outlines (features
    approximate); ``path`` is a slide folder's ``nuclei.parquet``."""
    import pyarrow as pa

    from pipeline.io.outputs.parquet import ParquetWriter
    from pipeline.io.outputs.schema import NUCLEI_SCHEMA

    cx = np.array([p[:, 0].mean() for p in polygons])
    cy = np.array([p[:, 1].mean() for p in polygons])
    area = np.array(
        [0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))) for p in polygons]
    )
    per = np.array([np.linalg.norm(np.diff(np.vstack([p, p[:1]]), axis=0), axis=1).sum() for p in polygons])
    table = pa.table(
        {
            "id": pa.array(np.arange(1, len(polygons) + 1, dtype=np.uint32)),
            "centroid_x": cx,
            "centroid_y": cy,
            "area_px": area,
            "area_um2": area * mpp * mpp,
            "perimeter_px": per,
            "eccentricity": np.zeros(len(polygons)),
            "mean_haematoxylin": np.full(len(polygons), 0.5),
            "polygon": pa.array([p.ravel().tolist() for p in polygons], type=pa.list_(pa.float64())),
        }
    )
    if path.name != "nuclei.parquet":
        raise ValueError(f"{path}: the nucleus table of a slide folder is named nuclei.parquet")
    writer = ParquetWriter(path.parent)
    writer.write(table.cast(NUCLEI_SCHEMA))
    writer.close()


__all__ = ["synthetic_png_slide", "synthetic_stats_cohort", "tissue_box", "write_nuclei_parquet", "write_stats"]
