"""Review patches (pipeline.qc._patches): their side at 40x, deterministic sampling in tissue,
the patches a build extracts from generated and real slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.qc import (
    build_qc,
    patch_side_level0,
    sample_patches,
    slide_rng,
)
from pipeline.testing.qc_cohorts import (
    tissue_box,
    write_nuclei_parquet,
    write_stats,
)
from tests.conftest import SHARED_DATA
from tests.qc.conftest import _slide_cohort, read_csv


def test_patch_side_at_40x() -> None:
    assert patch_side_level0(0.25) == 256
    assert patch_side_level0(0.499) == 128  # a 20x slide: 128 px read, upsampled ×2
    assert patch_side_level0(0.5) == 128


def test_sampling_is_deterministic_and_in_tissue() -> None:
    mask = np.zeros((100, 120), dtype=bool)
    mask[30:70, 40:100] = True
    args = (mask, 10.0, (1200, 1000), 64, 15)
    a = sample_patches(*args, slide_rng(0, "s1"))
    b = sample_patches(*args, slide_rng(0, "s1"))
    c = sample_patches(*args, slide_rng(1, "s1"))
    assert a == b and a != c and len(a) == 15
    for p in a:
        cx, cy = p.x + p.w / 2, p.y + p.h / 2
        assert mask[int(cy // 10), int(cx // 10)]
        assert 0 <= p.x <= 1200 - 64 and 0 <= p.y <= 1000 - 64
    boxes = [(p.x, p.y) for p in a]
    assert all(abs(x1 - x2) >= 64 or abs(y1 - y2) >= 64 for i, (x1, y1) in enumerate(boxes) for x2, y2 in boxes[:i])


def test_sampling_with_scarce_tissue_still_gives_n_patches() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[10, 10] = True
    patches = sample_patches(mask, 4.0, (200, 200), 64, 15, slide_rng(0, "x"))
    assert len(patches) == 15


def test_review_patches_lie_in_tissue_and_have_outlines(slide_cohort: Path) -> None:
    qc = build_qc(slide_cohort, report=False)
    sheet = read_csv(qc / "review_sheet.csv")
    assert list(sheet.columns) == ["WSI-ID", "PatchIndex", "X", "Y", "W", "H", "Image", "Adequate", "Comment"]
    assert len(sheet) == 3 * 15
    cx0, cy0, ax, ay = tissue_box((1200, 900))
    for _, r in sheet.iterrows():
        x, y, w, h = (int(r[c]) for c in ("X", "Y", "W", "H"))
        assert (w, h) == (256, 256)
        cx, cy = x + w / 2, y + h / 2
        assert ((cx - cx0) / ax) ** 2 + ((cy - cy0) / ay) ** 2 <= 1.05  # centre on the tissue ellipse
        img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(qc / r["Image"]))
        assert img.shape == (256, 2 * 256 + 8, 3)
        raw, over = img[:, :256], img[:, -256:]
        green = (over[..., 1] > 200) & (over[..., 0] < 80) & (over[..., 2] < 80)
        assert green.sum() > 50 and not ((raw[..., 1] > 200) & (raw[..., 0] < 80)).any()
    region = read_csv(qc / "random_region_check.csv")
    assert set(region["NumOfSampledRegions"]) == {"15"}


def test_patch_sampling_is_deterministic_across_builds(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _slide_cohort(a, n=2)
    _slide_cohort(b, n=2)
    build_qc(a)
    build_qc(b)
    sa = read_csv(a / "qc" / "review_sheet.csv")
    sb = read_csv(b / "qc" / "review_sheet.csv")
    assert sa.equals(sb)
    for rel in sa["Image"]:
        assert (a / "qc" / rel).read_bytes() == (b / "qc" / rel).read_bytes()
    for name in ("slides.csv", "wsi_qc.csv", "random_region_check.csv", "tiers.csv", "qc.json", "report.html"):
        assert (a / "qc" / name).read_bytes() == (b / "qc" / name).read_bytes(), name
    assert json.loads((a / "qc" / "patches" / "SYN-00" / "patches.json").read_text())["seed"] == 0
    build_qc(a, seed=7, report=False)
    assert not read_csv(a / "qc" / "review_sheet.csv")[["X", "Y"]].equals(sa[["X", "Y"]])


def test_missing_slide_file_is_skipped_with_a_note(tmp_path: Path) -> None:
    paths = _slide_cohort(tmp_path, n=2)
    paths["SYN-01"].unlink()
    qc = build_qc(tmp_path)
    region = read_csv(qc / "random_region_check.csv").set_index("WSI-ID")
    assert region.loc["SYN-00", "NumOfSampledRegions"] == "15"
    assert region.loc["SYN-01", "NumOfSampledRegions"] == "0"
    assert "slide file missing" in region.loc["SYN-01", "Note"]
    assert read_csv(qc / "slides.csv").set_index("WSI-ID").loc["SYN-01", "QCResult"] == "No regions"


@pytest.mark.skipif(not (SHARED_DATA / "wsi_fixtures").is_dir(), reason=f"no wsi_fixtures in {SHARED_DATA}")
def test_real_20x_slide_patches_in_tissue(tmp_path: Path) -> None:
    from pipeline.io.readers import low_resolution_view, open_slide
    from pipeline.kernels.tissue import tissue_mask

    svs = SHARED_DATA / "wsi_fixtures" / "CMU-1-Small-Region.svs"
    slide = open_slide(svs)
    view, ds = low_resolution_view(slide, 1024)
    mask = tissue_mask(view)
    # Nuclei drawn as small squares on a grid over the slide (the polygons need not be real).
    polys = [
        np.array([[x, y], [x + 8, y], [x + 8, y + 8], [x, y + 8]], float)
        for x in range(0, 2200, 40)
        for y in range(0, 2900, 40)
    ]
    stats = {
        "slide_id": "CMU-1",
        "cancer_type": "TEST",
        "slide_path": str(svs),
        "status": "ok",
        "error": None,
        "mpp": 0.499,
        "n_nuclei": len(polys),
        "area_mean_px40x": 200.0,
        "area_std_px40x": 70.0,
    }
    folder = write_stats(tmp_path, stats)
    write_nuclei_parquet(folder / "nuclei.parquet", polys, 0.499)
    qc = build_qc(tmp_path)
    sheet = read_csv(qc / "review_sheet.csv")
    assert len(sheet) == 15
    for _, r in sheet.iterrows():
        x, y, w = int(r["X"]), int(r["Y"]), int(r["W"])
        assert w == 128  # 20x: 128 level-0 px upsampled ×2 to 256
        assert mask[int((y + w / 2) // ds), int((x + w / 2) // ds)]
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(qc / sheet["Image"][0]))
    assert img.shape == (256, 520, 3)
