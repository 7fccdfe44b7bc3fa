"""Building a cohort's QC (pipeline.qc.build_qc) on generated run folders: the slides selected,
failed ones listed, scale flags, partial and earlier runs, tables no spreadsheet runs as formulas."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.qc import main as qc_main
from pipeline.io.outputs.stats import SlideStats
from pipeline.qc import build_qc
from pipeline.qc._reviews import load_verdict_store
from pipeline.testing.qc_cohorts import (
    synthetic_stats_cohort,
    write_stats,
)
from tests.conftest import qc_cli
from tests.qc.conftest import FORMULAS, KIDNEY_RATIOS, LIVER_RATIOS, SIZES, _cells, _slide_cohort, read_csv

# ------------------------------------------------------------------- selection on a cohort ----


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


def test_no_warnings_leak(slide_cohort: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_qc(slide_cohort)


# ------------------------------------------------------------- spreadsheet formula injection ----


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
    n_nuclei was edited, or whose nuclei.parquet is gone, is a failed row saying so, with none of the
    record's figures, as any failed slide (before: 999,999 nuclei in the QC tables, then in the
    failed row's NumNucleiSample). Records without a run's inputs (generated cohorts) are read as
    they are."""
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
    for sid in ("SYN-00", "SYN-01"):  # the record's figures are not the slide's
        assert cohort.loc[sid, ["n_nuclei", "area_mean_um2", "nuclei_per_mm2"]].isna().all()
    assert cohort.loc["SYN-02", ["n_nuclei", "area_mean_um2"]].notna().all()
    build_qc(tmp_path, patches="none", report=False)
    wsi = read_csv(tmp_path / "qc" / "wsi_qc.csv").set_index("WSI-ID")
    assert "999999" not in wsi.loc["SYN-00"].astype(str).tolist()


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
