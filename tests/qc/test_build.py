"""Cohort QC (pipeline.qc): selection, tiers, review patches, review ingestion, rebuilds."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli.qc import main as qc_main
from pipeline.io.annotations import data_dir
from pipeline.io.outputs.stats import SlideStats
from pipeline.qc import (
    ReviewError,
    build_qc,
    outer_cut,
    patch_side_level0,
    qc_result,
    sample_patches,
    scale_outliers,
    select_for_review,
    slide_rng,
    tail_size,
    tier_for,
)
from pipeline.qc._reviews import load_verdict_store
from pipeline.testing.qc_cohorts import (
    synthetic_png_slide,
    synthetic_stats_cohort,
    tissue_box,
    write_nuclei_parquet,
    write_run_record,
    write_stats,
)
from tests.conftest import (
    SPECIAL_FILES,
    bounded_cli,
    qc_cli,
    special_file,
)

SHARED_DATA = data_dir()
SIZES = {"BRCA": 100, "LUAD": 250, "GBM": 30}  # k = 2, 5 and 0 at 2 %


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ------------------------------------------------------------------ the outer-percent cut ----


@pytest.mark.parametrize(
    ("n", "p", "k"),
    [
        (49, 2.0, 0),
        (50, 2.0, 1),
        (99, 2.0, 1),
        (100, 2.0, 2),
        (150, 2.0, 3),
        (506, 2.0, 10),
        (24, 4.0, 0),
        (25, 4.0, 1),
        (75, 4.0, 3),
        (0, 2.0, 0),
    ],
)
def test_tail_size_is_exact_floor(n: int, p: float, k: int) -> None:
    assert tail_size(n, p) == k


def test_outer_cut_selects_at_most_k_per_tail_strictly_beyond_the_cut() -> None:
    v = np.arange(100.0)
    n, k, low, high = outer_cut(v, 2.0)
    assert (n, k) == (100, 2)
    assert np.flatnonzero(v < low).tolist() == [0, 1]
    assert np.flatnonzero(v > high).tolist() == [98, 99]


def test_outer_cut_small_group_selects_nothing() -> None:
    assert outer_cut(np.r_[np.ones(48), 1e9], 2.0) == (49, 0, None, None)


def test_outer_cut_ties_at_the_cut_are_not_selected() -> None:
    v = np.array([1.0, 2.0, 2.0, 2.0] + [5.0] * 96)  # k = 2; v[2] = 2 ties with v[1]
    _, _, low, high = outer_cut(v, 2.0)
    assert (v < low).sum() == 1  # only the 1.0; the tied 2.0s stay
    assert (v > high).sum() == 0  # constant top: nothing


def test_outer_cut_high_tail_only() -> None:
    _, _, low, high = outer_cut(np.arange(100.0), 2.0, tails=("high",))
    assert low is None and high == 97.0


def test_select_for_review_notes_and_small_spread_not_a_flag() -> None:
    rng = np.random.default_rng(1)
    n = 100
    counts, means, stds = rng.uniform(2e5, 8e5, n), rng.uniform(180, 260, n), rng.uniform(60, 100, n)
    counts[[0, 1]] = [10, 20]
    means[[2, 3]] = [600, 700]
    stds[[4, 5]] = [1, 2]  # tiny spread: must not be selected
    stds[[6, 7]] = [300, 400]
    notes, cuts = select_for_review(
        ["T"] * n, {"NumNucleiSample": counts, "SizeOfNuclei-Average": means, "SizeOfNuclei-Stddev": stds}
    )
    selected = {i: v for i, v in enumerate(notes) if v}
    # Each examined tail holds k = 2 slides; the planted ones are the extremes, plus the two
    # slides that happen to hold the other tails' extremes (high count, low mean).
    assert selected[0] == selected[1] == ["NumNucleiSample low (outer 2%)"]
    assert selected[2] == selected[3] == ["SizeOfNuclei-Average high (outer 2%)"]
    assert selected[6] == selected[7] == ["SizeOfNuclei-Stddev high (outer 2%)"]
    assert 4 not in selected and 5 not in selected
    assert sum(len(v) for v in notes) == 2 * 5
    assert {(c.statistic, c.k) for c in cuts} == {
        ("NumNucleiSample", 2),
        ("SizeOfNuclei-Average", 2),
        ("SizeOfNuclei-Stddev", 2),
    }


def test_zero_nuclei_always_selected_even_in_small_groups() -> None:
    notes, _ = select_for_review(
        ["T"] * 5,
        {
            "NumNucleiSample": np.array([0.0, 5, 6, 7, 8]),
            "SizeOfNuclei-Average": np.full(5, 200.0),
            "SizeOfNuclei-Stddev": np.full(5, 80.0),
        },
    )
    assert notes[0] == ["NumNucleiSample zero"] and not any(notes[1:])


# ------------------------------------------------------------------------------- tiers ----


@pytest.mark.parametrize(
    ("bad", "n", "tier"),
    [
        (0, 15, "Best"),
        (1, 15, "Good"),
        (2, 15, "Adequate"),
        (3, 15, "Problematic"),
        (4, 15, "Unacceptable"),
        (0, 1000, "Best"),
        (1, 1000, "Good"),  # 0 % boundary
        (2, 30, "Good"),
        (66, 1000, "Good"),
        (67, 1000, "Adequate"),
        (1, 14, "Adequate"),  # 6.67 %
        (4, 30, "Adequate"),
        (133, 1000, "Adequate"),
        (134, 1000, "Problematic"),
        (2, 14, "Problematic"),  # 13.3 %
        (6, 30, "Problematic"),
        (200, 1000, "Problematic"),
        (201, 1000, "Unacceptable"),  # 20 %
        (7, 30, "Unacceptable"),
        (15, 15, "Unacceptable"),
    ],
)
def test_tier_boundaries(bad: int, n: int, tier: str) -> None:
    assert tier_for(bad, n) == tier


def test_tier_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        tier_for(0, 0)
    with pytest.raises(ValueError):
        tier_for(3, 2)


def test_qc_result_rules() -> None:
    assert qc_result("failed", "", 0, 0, 0) == "Failed"
    assert qc_result("ok", "Unacceptable", 0, 15, 15) == "Unacceptable"  # failed WSI review
    assert qc_result("ok", "Acceptable", 1, 15, 15) == "Good"
    assert qc_result("ok", "", 0, 10, 15) == "Pending review"
    assert qc_result("ok", "", 3, 5, 15) == "Pending review"  # 3/15 could still be Problematic
    assert qc_result("ok", "", 4, 5, 15) == "Unacceptable"  # 4/15 > 20 % whatever comes next
    assert qc_result("ok", "", 0, 0, 0) == "No regions"


# ------------------------------------------------------------------- selection on a cohort ----


@pytest.fixture(scope="module")
def stats_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    out = tmp_path_factory.mktemp("cohort")
    expected = synthetic_stats_cohort(out, SIZES, seed=3)
    return out, expected


def test_exactly_the_planted_slides_are_selected(stats_cohort: tuple[Path, dict[str, list[str]]]) -> None:
    src, expected = stats_cohort
    qc = build_qc(src, patches="none", report=False)
    wsi = read_csv(qc / "wsi_qc.csv").set_index("WSI-ID")
    got = {
        sid: (row["Note"].split("; ") if row["Note"] and row["Status"] == "ok" else []) for sid, row in wsi.iterrows()
    }
    assert got == expected
    assert (wsi["SelectedForReview"] == "yes").sum() == sum(bool(v) for v in expected.values())
    assert not wsi.loc[wsi.index.str.startswith("GBM"), "Note"].str.contains("outer").any()  # n = 30 < 50
    thresholds = read_csv(qc / "thresholds.csv")
    assert set(thresholds.loc[thresholds.CancerType == "GBM", "K"]) == {"0"}
    assert thresholds.loc[thresholds.CancerType == "GBM", "Note"].str.contains("too small").all()


def test_failed_slides_listed_with_their_reason(stats_cohort: tuple[Path, dict[str, list[str]]]) -> None:
    src, _ = stats_cohort
    qc = build_qc(src, patches="none", report=False)
    wsi = read_csv(qc / "wsi_qc.csv").set_index("WSI-ID")
    slides = read_csv(qc / "slides.csv").set_index("WSI-ID")
    for ctype in SIZES:
        sid = f"{ctype}-F000"
        assert wsi.loc[sid, "Status"] == "failed"
        assert wsi.loc[sid, "Note"].startswith("failed: unreadable slide")
        assert slides.loc[sid, "QCResult"] == "Failed"
    assert list(read_csv(qc / "slides.csv").columns) == ["CancerType", "WSI-ID", "QCResult"]
    for col in (
        "NumNucleiSample",
        "SizeOfNuclei-Average",
        "SizeOfNuclei-Stddev",
        "Note",
        "SegmentationUnacceptableOrNot",
        "VisualAssessmentComment",
        "CancerType",
    ):
        assert col in wsi.columns
    region = read_csv(qc / "random_region_check.csv")
    assert {"WSI-ID", "CancerType", "NumOfUnacceptableSegRegions", "NumOfSampledRegions", "Tier"} <= set(region)


def test_outer_percent_4_widens(tmp_path: Path) -> None:
    synthetic_stats_cohort(tmp_path, {"BRCA": 100}, seed=5)
    assert qc_main([str(tmp_path), "--outer-percent", "4", "--patches", "none", "--no-report"]) == 0
    wsi = read_csv(tmp_path / "qc" / "wsi_qc.csv")
    notes = [n for cell in wsi.loc[wsi.Status == "ok", "Note"] for n in cell.split("; ") if n]
    assert len(notes) == 5 * 4  # five examined tails, k = 4 each
    assert all(n.endswith("(outer 4%)") for n in notes)
    assert json.loads((tmp_path / "qc" / "qc.json").read_text())["outer_percent"] == 4.0


def test_partial_cohort_ignores_unfinished_folders(tmp_path: Path) -> None:
    synthetic_stats_cohort(tmp_path, {"BRCA": 10}, n_failed=0)
    (tmp_path / "slides" / ".BRCA-99999.tmp").mkdir()
    (tmp_path / "slides" / ".BRCA-99999.tmp" / "stats.json").write_text("{")
    (tmp_path / "slides" / "no-stats-yet").mkdir()
    qc = build_qc(tmp_path, patches="none")
    assert len(read_csv(qc / "slides.csv")) == 10
    assert (qc / "report.html").exists()


# --------------------------------------------------------------------- scale within a type ----

# Estimate/metadata ratios of correctly labelled tiles of two organs (MoNuSeg training images, liver
# at 40x, kidney at 20x; benchmarks/scale_check.py): each organ's nuclei read their own way.
LIVER_RATIOS = (0.72, 1.01, 0.79, 0.80, 0.93, 0.69)
KIDNEY_RATIOS = (1.26, 1.22, 1.07, 2.07, 1.70, 1.41)


def test_scale_outliers_compare_each_slide_with_its_cancer_types_median() -> None:
    types = ["LIHC"] * 6 + ["KIRC"] * 6 + ["GBM"] * 2
    ratios = np.array([*LIVER_RATIOS, *KIDNEY_RATIOS, 3.0, 0.3])
    assert scale_outliers(types, ratios) == [""] * 14  # kidney's 2.26 is its type's; two GBM slides: no median
    for i, k in [(0, 2.0), (3, 0.5), (9, 2.0), (8, 0.5)]:  # one slide labelled 2x wrong
        wrong = ratios.copy()
        wrong[i] *= k
        notes = scale_outliers(types, wrong)
        assert [j for j, n in enumerate(notes) if n] == [i], (i, k)
        assert notes[i].startswith("scale_outlier: MPPEstimate/MPP ") and "median" in notes[i]
    assert scale_outliers(["A"] * 4, np.array([1.0, np.nan, np.nan, 5.0])) == ["", "", "", ""]  # 2 stated: no median
    assert scale_outliers(["A"] * 4, np.array([1.0, np.nan, 1.1, 5.0]))[3]  # 3: one mislabelled is outvoted


def _scale_stats(sid: str, ctype: str, mpp: float, estimate: float, source: str = "slide") -> dict[str, object]:
    return SlideStats(
        slide_id=sid,
        cancer_type=ctype,
        slide_path="/nonexistent/slide.svs",
        status="ok",
        mpp=mpp,
        mpp_source=source,
        mpp_field="Aperio MPP" if source == "slide" else None,
        mpp_estimate=estimate,
        flags=[],
        n_nuclei=500_000,
        area_mean_px40x=220.0,
        area_std_px40x=80.0,
    ).as_dict()


def test_a_slide_labelled_2x_wrong_is_flagged_against_its_cancer_type(tmp_path: Path) -> None:
    """20x liver and kidney slides, correctly labelled but for one liver slide whose metadata says
    40x: only that one is flagged, with its reason; kidney's large ratios are its tissue's."""
    for i, r in enumerate(LIVER_RATIOS):
        mpp = 0.25 if i == 2 else 0.5  # LIHC-2 is a 20x slide labelled 40x
        write_stats(tmp_path, _scale_stats(f"LIHC-{i}", "LIHC", mpp, 0.5 * r))
    for i, r in enumerate(KIDNEY_RATIOS):
        write_stats(tmp_path, _scale_stats(f"KIRC-{i}", "KIRC", 0.5, 0.5 * r))
    write_stats(tmp_path, _scale_stats("KIRC-est", "KIRC", 1.3, 1.3, source="estimate"))  # no stated scale
    qc = build_qc(tmp_path, patches="none", report=False)
    wsi = read_csv(qc / "wsi_qc.csv").set_index("WSI-ID")
    flagged = wsi.index[wsi["Flags"].str.contains("scale_outlier")].tolist()
    assert flagged == ["LIHC-2"]
    assert wsi.loc["LIHC-2", "SelectedForReview"] == "yes"
    median = np.median([0.5 * r / (0.25 if i == 2 else 0.5) for i, r in enumerate(LIVER_RATIOS)])
    assert f"MPPEstimate/MPP 1.58 is {1.58 / median:.2f}× the LIHC median {median:.2f}" in wsi.loc["LIHC-2", "Note"]
    assert (wsi.drop(index="LIHC-2")["SelectedForReview"] == "no").all()
    assert (wsi.drop(index="LIHC-2")["Note"] == "").all()


# ---------------------------------------------------------------------- review patches ----


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


# ------------------------------------------------------------------------ review ingestion ----


def _fill_sheet(qc: Path, dest: Path, answers: dict[tuple[str, int], str]) -> Path:
    with open(qc / "review_sheet.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["Adequate"] = answers.get((r["WSI-ID"], int(r["PatchIndex"])), r["Adequate"])
    with open(dest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dest


def _all(sid: str, bad: int, n: int = 15) -> dict[tuple[str, int], str]:
    return {(sid, i): ("no" if i < bad else "yes") for i in range(n)}


def test_reviews_fold_into_tables_and_survive_rebuilds(slide_cohort: Path, tmp_path: Path) -> None:
    qc = build_qc(slide_cohort, report=False)
    sheet = _fill_sheet(qc, tmp_path / "sheet.csv", {**_all("SYN-00", 0), **_all("SYN-01", 2)})
    verdicts = tmp_path / "wsi.csv"
    verdicts.write_text(
        "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nSYN-02,yes,nuclei merged in clusters\n"
    )
    assert qc_main([str(slide_cohort), "--reviews", str(sheet), str(verdicts), "--no-report"]) == 0

    def check(n_recorded: int = 30) -> None:
        region = read_csv(qc / "random_region_check.csv").set_index("WSI-ID")
        assert region.loc["SYN-00", ["NumOfUnacceptableSegRegions", "NumOfSampledRegions", "Tier"]].tolist() == [
            "0",
            "15",
            "Best",
        ]
        assert region.loc["SYN-01", ["NumOfUnacceptableSegRegions", "Tier"]].tolist() == ["2", "Adequate"]
        assert region.loc["SYN-02", "Tier"] == ""
        result = read_csv(qc / "slides.csv").set_index("WSI-ID")["QCResult"].to_dict()
        assert result == {"SYN-00": "Best", "SYN-01": "Adequate", "SYN-02": "Unacceptable"}
        wsi = read_csv(qc / "wsi_qc.csv").set_index("WSI-ID")
        assert wsi.loc["SYN-02", "SegmentationUnacceptableOrNot"] == "Unacceptable"
        assert wsi.loc["SYN-02", "VisualAssessmentComment"] == "nuclei merged in clusters"
        tiers = read_csv(qc / "tiers.csv").set_index("CancerType")
        assert tiers.loc["SYN", ["Best", "Adequate", "Unacceptable", "Total"]].tolist() == ["1", "1", "1", "3"]
        refilled = read_csv(qc / "review_sheet.csv")
        assert (refilled["Adequate"] != "").sum() == n_recorded  # the sheet shows what is recorded

    check()
    build_qc(slide_cohort, report=False)  # rebuild without reviews: nothing lost
    check()
    # A later sheet for one more patch of another slide merges with what is there.
    sheet2 = _fill_sheet(qc, tmp_path / "sheet2.csv", {("SYN-02", 0): "no"})
    build_qc(slide_cohort, reviews=[sheet2], report=False)
    check(31)
    region = read_csv(qc / "random_region_check.csv").set_index("WSI-ID")
    assert region.loc["SYN-02", ["NumOfUnacceptableSegRegions", "NumOfReviewedRegions"]].tolist() == ["1", "1"]


def test_malformed_review_rows_rejected_with_row_named(slide_cohort: Path, tmp_path: Path) -> None:
    qc = build_qc(slide_cohort, report=False)
    good = _fill_sheet(qc, tmp_path / "good.csv", _all("SYN-00", 1))
    build_qc(slide_cohort, reviews=[good], report=False)
    store = (qc / "reviews" / "patch_reviews.csv").read_bytes()
    tables = (qc / "random_region_check.csv").read_bytes()

    bad = _fill_sheet(qc, tmp_path / "bad.csv", {("SYN-01", 0): "yes", ("SYN-01", 1): "maybe"})
    lines = bad.read_text().splitlines()
    lines.append("NOPE-99,0,0,0,256,256,x.png,yes,")  # unknown slide
    lines.append("SYN-01,99,0,0,256,256,x.png,no,")  # no such patch
    x_wrong = lines[3].split(",")
    x_wrong[2] = str(int(x_wrong[2]) + 1)
    x_wrong[7] = "no"
    lines[3] = ",".join(x_wrong)  # SYN-00 patch 2 at a position that was never sampled
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReviewError) as err:
        build_qc(slide_cohort, reviews=[bad], report=False)
    problems = err.value.problems
    text = "\n".join(problems)
    assert "bad.csv line 4 (SYN-00 patch 2): X=" in text
    assert any("line 18" in p and "'maybe' is not yes/no" in p for p in problems)
    assert any("line 47" in p and "unknown WSI-ID 'NOPE-99'" in p for p in problems)
    assert any("line 48" in p and "no sampled patch PatchIndex '99'" in p for p in problems)
    assert len(problems) == 4
    # Nothing recorded from the bad file (not even its good row), nothing lost.
    assert (qc / "reviews" / "patch_reviews.csv").read_bytes() == store
    assert (qc / "random_region_check.csv").read_bytes() == tables
    # Through the CLI: exit code 2 and the rows on stderr.
    assert qc_main([str(slide_cohort), "--reviews", str(bad), "--no-report"]) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nSYN-00,perhaps,\n", "line 2 (SYN-00)"),
        ("WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nSYN-00,,looks odd\n", "a comment but no"),
        (
            "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nSYN-00,yes,\nSYN-00,no,\n",
            "line 3 (SYN-00): contradicts line 2",
        ),
        ("WSI-ID,Foo\nSYN-00,1\n", "neither a patch review sheet"),
        ("Slide,SegmentationUnacceptableOrNot\nSYN-00,yes\n", "no WSI-ID column"),
        ("WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nSYN-00,yes,a,b\n", "more fields"),
    ],
)
def test_malformed_wsi_verdicts(slide_cohort: Path, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "v.csv"
    path.write_text(content)
    with pytest.raises(ReviewError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_qc(slide_cohort, reviews=[path], patches="none", report=False)
    assert not (slide_cohort / "qc" / "reviews" / "wsi_verdicts.csv").exists()


def test_blank_answers_are_not_reviews(slide_cohort: Path) -> None:
    qc = build_qc(slide_cohort, report=False)
    build_qc(slide_cohort, reviews=[qc / "review_sheet.csv"], report=False)  # the untouched sheet
    assert read_csv(qc / "random_region_check.csv")["NumOfReviewedRegions"].tolist() == ["0"] * 3


def test_no_warnings_leak(slide_cohort: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_qc(slide_cohort)


def test_rules_docstring_examples() -> None:
    import doctest

    import pipeline.qc._rules as rules

    assert doctest.testmod(rules).failed == 0


def test_filled_wsi_review_sheet_round_trip(stats_cohort: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    src, expected = stats_cohort
    out = tmp_path / "run"
    shutil.copytree(src / "slides", out / "slides")
    shutil.copy(src / "run.json", out / "run.json")
    qc = build_qc(out, patches="none", report=False)
    sheet = read_csv(qc / "wsi_review_sheet.csv")
    assert sorted(sheet["WSI-ID"]) == sorted(sid for sid, notes in expected.items() if notes)
    sheet["SegmentationUnacceptableOrNot"] = ["yes" if i % 2 else "no" for i in range(len(sheet))]
    sheet.loc[0, "VisualAssessmentComment"] = "stain too pale, nuclei missed"
    filled = tmp_path / "wsi_filled.csv"
    sheet.to_csv(filled, index=False)
    assert qc_main([str(out), "--reviews", str(filled), "--patches", "none", "--no-report"]) == 0
    wsi = read_csv(qc / "wsi_qc.csv").set_index("WSI-ID")
    slides = read_csv(qc / "slides.csv").set_index("WSI-ID")
    for i, sid in enumerate(sheet["WSI-ID"]):
        assert wsi.loc[sid, "SegmentationUnacceptableOrNot"] == ("Unacceptable" if i % 2 else "Acceptable")
        assert slides.loc[sid, "QCResult"] == ("Unacceptable" if i % 2 else "No regions")
    assert wsi.loc[sheet["WSI-ID"][0], "VisualAssessmentComment"] == "stain too pale, nuclei missed"


# ------------------------------------------------------------- spreadsheet formula injection ----

FORMULAS = ('=HYPERLINK("http://evil.example/","click")', "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1")


def _cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


def test_no_cell_of_the_qc_tables_starts_a_formula(tmp_path: Path) -> None:
    """Cancer types and review comments that start like a spreadsheet formula are written as text
    (a quote in front) in every table; a rebuild reads its own store back unchanged."""
    import itertools

    synthetic_stats_cohort(tmp_path, {f"T{i}": 3 for i in range(len(FORMULAS))}, n_failed=1)
    sids = sorted(p.name for p in (tmp_path / "slides").iterdir())
    for sid in sids:  # cancer types come from the manifest as they are
        record = tmp_path / "slides" / sid / "stats.json"
        stats = json.loads(record.read_text())
        record.write_text(json.dumps({**stats, "cancer_type": FORMULAS[int(stats["cancer_type"][1:])]}))
    ok = [s for s in sids if "-F" not in s]
    texts = itertools.cycle(["-merged nuclei", "=1+1", "'=already quoted", "'plain quote"])
    comments = dict(zip(ok, texts, strict=False))
    verdicts = tmp_path / "verdicts.csv"
    with open(verdicts, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["WSI-ID", "SegmentationUnacceptableOrNot", "VisualAssessmentComment"])
        w.writerows([sid, "yes", comment] for sid, comment in comments.items())
    for _ in range(2):  # the second build reads the store the first one wrote
        qc = build_qc(tmp_path, reviews=[verdicts], patches="none", report=False)
        tables = [*qc.glob("*.csv"), *(qc / "reviews").glob("*.csv")]
        assert {p.name for p in tables} >= {
            "slides.csv",
            "wsi_qc.csv",
            "tiers.csv",
            "thresholds.csv",
            "random_region_check.csv",
            "review_sheet.csv",
            "wsi_review_sheet.csv",
            "wsi_verdicts.csv",
        }
        for table in tables:
            bad = [c for c in _cells(table) if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
            assert not bad, (table.name, bad)
        wsi = {r["WSI-ID"]: r for r in csv.DictReader(open(qc / "wsi_qc.csv", newline="", encoding="utf-8"))}
        shown = {
            "-merged nuclei": "'-merged nuclei",
            "=1+1": "'=1+1",
            "'=already quoted": "'=already quoted",  # a sheet that kept the table's guard: read as =...
            "'plain quote": "'plain quote",
        }
        assert {sid: wsi[sid]["VisualAssessmentComment"] for sid in comments} == {
            sid: shown[c] for sid, c in comments.items()
        }
        assert {r["CancerType"] for r in wsi.values()} == {"'" + t.replace("\r", "\n") for t in FORMULAS}
        # the store gives back what the reviewer wrote, build after build
        recorded = {sid: c.removeprefix("'") if c.startswith("'=") else c for sid, c in comments.items()}
        assert {sid: v.comment for sid, v in load_verdict_store(qc / "reviews").items()} == recorded
    # numbers stay numbers: a negative cut is not guarded
    thresholds = _cells(qc / "thresholds.csv")
    assert not any(c.startswith("'") and c[1:].replace(".", "").lstrip("-").isdigit() for c in thresholds)


def test_guarded_review_sheet_reads_back_unchanged(
    stats_cohort: tuple[Path, dict[str, list[str]]], tmp_path: Path
) -> None:
    """The WSI review sheet as the QC wrote it (guarded cells), filled in and given back: the
    comment recorded is the reviewer's text, not the guard."""
    src, _ = stats_cohort
    out = tmp_path / "run"
    shutil.copytree(src / "slides", out / "slides")
    qc = build_qc(out, patches="none", report=False)
    with open(qc / "wsi_review_sheet.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[1][4], rows[1][5] = "yes", "'-nuclei missed at the edge"  # as a spreadsheet keeps the quote
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    build_qc(out, reviews=[filled], patches="none", report=False)
    assert load_verdict_store(qc / "reviews")[rows[1][0]].comment == "-nuclei missed at the edge"


# ------------------------------------------------------------------------ bounded inputs ----


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_review_file_that_is_no_regular_file_is_refused(kind: str, tmp_path: Path) -> None:
    """``--reviews`` a FIFO (no hang), /dev/zero or /dev/urandom (no read without end) or a folder:
    exit 2, one ``error:`` line and the file named under it, nothing recorded."""
    synthetic_stats_cohort(tmp_path / "run", {"BRCA": 3}, n_failed=0)
    path = special_file(kind, tmp_path)
    result = bounded_cli("pipeline.qc", str(tmp_path / "run"), "--reviews", str(path), "--patches", "none")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[:1], result.stderr[-2000:]
    assert len(lines) == 2 and str(path) in lines[1] and "not a regular file" in lines[1], result.stderr[-2000:]
    assert not (tmp_path / "run" / "qc" / "reviews").exists()


def test_review_file_over_the_byte_limit_is_refused(
    slide_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.qc._reviews

    verdicts = tmp_path / "v.csv"
    verdicts.write_text("WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\n" + "SYN-00,yes,\n" * 50)
    monkeypatch.setattr(pipeline.qc._reviews, "MAX_REVIEW_BYTES", 500)
    with pytest.raises(ReviewError, match=r"v\.csv: more than 500 bytes"):
        build_qc(slide_cohort, reviews=[verdicts], patches="none", report=False)


# ------------------------------------------------------------------ which folders are a run's ----


def test_qc_refuses_a_folder_that_is_no_runs_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with a slides/ but no run.json is not a run's output: nothing is built there."""
    (tmp_path / "slides" / "x").mkdir(parents=True)
    assert qc_main([str(tmp_path), "--patches", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path} is not the output folder of a run"), err
    assert "run.json" in err
    assert not (tmp_path / "qc").exists()


def test_qc_says_when_the_run_is_still_being_written(tmp_path: Path) -> None:
    """The QC of a folder a live run holds covers the slides finished so far, and says so; that of a
    run that stopped before it finished says that too."""
    synthetic_stats_cohort(tmp_path, {"BRCA": 3}, n_failed=0)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from pipeline.io.outputs.lock import lock_output; "
            f"lock = lock_output(Path({str(tmp_path)!r})); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = bounded_cli("pipeline.qc", str(tmp_path), "--patches", "none", "--no-report")
    finally:
        holder.communicate("")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "still being written" in warning[0] and f"pid {holder.pid}" in warning[0], warning
    run = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**run, "status": "running"}))  # a run killed outright
    result = bounded_cli("pipeline.qc", str(tmp_path), "--patches", "none", "--no-report")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "did not finish" in warning[0] and "rerun" in warning[0], warning


def test_cancer_types_of_earlier_records_are_one_group_each(tmp_path: Path) -> None:
    """stats.json written from a manifest before cancer types were checked: the NFC and NFD
    spellings of one name are one group, and a bidirectional control is shown as its code."""
    synthetic_stats_cohort(tmp_path, {"T0": 2, "T1": 2, "T2": 2}, n_failed=0)
    names = {"T0": "Caf\u00e9", "T1": "Cafe\u0301", "T2": "\u202eDAUL"}
    for folder in (tmp_path / "slides").iterdir():
        stats = json.loads((folder / "stats.json").read_text())
        (folder / "stats.json").write_text(json.dumps({**stats, "cancer_type": names[stats["cancer_type"]]}))
    qc = build_qc(tmp_path, patches="none", report=False)
    tiers = read_csv(qc / "tiers.csv")
    assert sorted(tiers["CancerType"]) == sorted(["All", "Caf\u00e9", "<U+202E>DAUL"])
    assert not any("\u202e" in c for table in qc.glob("*.csv") for c in _cells(table))


def test_a_run_record_whose_count_is_not_its_tables_is_not_reported(tmp_path: Path) -> None:
    """The QC reports a run's counts only where its nucleus table holds them: a stats.json whose
    n_nuclei was edited, or whose nuclei.parquet is gone, is a failed row saying so (before: 999,999
    nuclei in the QC tables). Records without a run's inputs (generated cohorts) are read as they are."""
    from pipeline.qc._cohort import read_cohort

    paths = _slide_cohort(tmp_path)
    slides = tmp_path / "slides"
    for sid in ("SYN-00", "SYN-01", "SYN-02"):
        stats = json.loads((slides / sid / "stats.json").read_text())
        stats["inputs"] = {"slide_bytes": paths[sid].stat().st_size}  # as a run records it
        if sid == "SYN-00":
            stats["n_nuclei"] = 999999
        (slides / sid / "stats.json").write_text(json.dumps(stats))
    (slides / "SYN-01" / "nuclei.parquet").unlink()
    cohort = read_cohort(tmp_path).set_index("slide_id")
    assert cohort.loc["SYN-00", "status"] == "failed"
    assert "its stats.json counts 999,999 nuclei, nuclei.parquet holds" in cohort.loc["SYN-00", "error"]
    assert cohort.loc["SYN-01", "status"] == "failed" and "nuclei.parquet is missing" in cohort.loc["SYN-01", "error"]
    assert cohort.loc["SYN-02", "status"] == "ok"


def test_stats_json_without_slide_id_is_left_out_with_a_warning(qc_cohort: Path) -> None:
    """One foreign or damaged stats.json does not cost the others their QC: it is left out, named."""
    stats = qc_cohort / "slides" / "BRCA-00003" / "stats.json"
    data = json.loads(stats.read_text())
    data.pop("slide_id")
    stats.write_text(json.dumps(data))
    code, err = qc_cli(qc_cohort)
    assert code == 1, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(stats) in warnings[0] and "slide_id" in warnings[0], err
    import csv

    with open(qc_cohort / "qc" / "slides.csv", newline="") as f:
        listed = {r["WSI-ID"] for r in csv.DictReader(f)}
    assert "BRCA-00003" not in listed and len(listed) == 12  # 11 ok + 1 failed
    assert json.loads((qc_cohort / "qc" / "qc.json").read_text())["unusable_stats"] == [warnings[0][9:]]
    from pipeline.qc import build_qc

    with pytest.warns(UserWarning, match="BRCA-00003"):
        build_qc(qc_cohort, patches="none", report=False)
