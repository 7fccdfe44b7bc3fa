"""What the QC's tests share: generated run folders (stats only, or with slides) and their tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from pipeline.testing.qc_cohorts import (
    synthetic_png_slide,
    synthetic_stats_cohort,
    write_nuclei_parquet,
    write_run_record,
    write_stats,
)

SIZES = {"BRCA": 100, "LUAD": 250, "GBM": 30}  # k = 2, 5 and 0 at 2 %


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def stats_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    out = tmp_path_factory.mktemp("cohort")
    expected = synthetic_stats_cohort(out, SIZES, seed=3)
    return out, expected


# Estimate/metadata ratios of correctly labelled tiles of two organs (MoNuSeg training images, liver
# at 40x, kidney at 20x; benchmarks/scale_check.py): each organ's nuclei read their own way.
LIVER_RATIOS = (0.72, 1.01, 0.79, 0.80, 0.93, 0.69)


KIDNEY_RATIOS = (1.26, 1.22, 1.07, 2.07, 1.70, 1.41)


def _slide_cohort(out: Path, n: int = 3, mpp: float = 0.25) -> dict[str, Path]:
    """A cohort of n ok slides backed by generated PNG slides with nuclei.parquet."""
    paths = {}
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sid = f"SYN-{i:02d}"
        png = out / f"{sid}.png"
        polys = synthetic_png_slide(png, seed=i)
        stats = {
            "slide_id": sid,
            "cancer_type": "SYN",
            "slide_path": str(png),
            "status": "ok",
            "error": None,
            "reader": "image",
            "width": 1200,
            "height": 900,
            "mpp": mpp,
            "tissue_mm2": 0.03,
            "n_nuclei": len(polys),
            "area_mean_um2": 12.0,
            "area_std_um2": 3.0,
            "area_mean_px40x": 192.0,
            "area_std_px40x": 48.0,
            "nuclei_per_mm2": 1e4,
            "n_tiles": 1,
            "seconds": 1.0,
            "model_sha256": "0" * 64,
        }
        folder = write_stats(out, stats)
        write_nuclei_parquet(folder / "nuclei.parquet", polys, mpp)
        paths[sid] = png
    write_run_record(out)
    return paths


@pytest.fixture()
def slide_cohort(tmp_path: Path) -> Path:
    _slide_cohort(tmp_path)
    return tmp_path


FORMULAS = ('=HYPERLINK("http://evil.example/","click")', "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1")


def _cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]
