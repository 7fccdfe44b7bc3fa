"""Review sheets, review files and the review store (pipeline.qc._reviews): reviews fold into the
tables and survive rebuilds, malformed rows are named, spreadsheet encodings and delimiters are
read, another encoding or a file that is no regular file is refused, a damaged store is left as it is."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pipeline.cli.qc import main as qc_main
from pipeline.qc import (
    ReviewError,
    build_qc,
)
from pipeline.qc._reviews import load_verdict_store
from pipeline.testing.qc_cohorts import synthetic_stats_cohort
from tests.conftest import SPECIAL_FILES, bounded_cli, qc_cli, special_file
from tests.qc.conftest import read_csv


def verdicts_of(run: Path) -> dict[str, tuple[str, str]]:
    import csv

    with open(run / "qc" / "wsi_qc.csv", newline="", encoding="utf-8") as f:
        return {
            r["WSI-ID"]: (r["SegmentationUnacceptableOrNot"], r["VisualAssessmentComment"])
            for r in csv.DictReader(f)
            if r["SegmentationUnacceptableOrNot"]
        }


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("utf-16", ","), ("utf-16", "\t"), ("utf-16-le", ","), ("utf-16-be", "\t"), ("utf-8-sig", ";")],
)
def test_review_file_saved_by_a_spreadsheet_is_read(encoding: str, delimiter: str, qc_cohort: Path) -> None:
    """Spreadsheets save UTF-16 ("Unicode text": tab-separated, with a byte-order mark, or without
    one), and semicolon-separated CSV where the comma is the decimal mark: all are read as written."""
    text = delimiter.join(["WSI-ID", "SegmentationUnacceptableOrNot", "VisualAssessmentComment"]) + "\r\n"
    text += delimiter.join(["BRCA-00001", "yes", "noyaux fusionnés, contours flous"]) + "\r\n"
    path = qc_cohort / "verdicts.csv"
    if delimiter == ",":  # the comment's comma is quoted
        text = text.replace("noyaux fusionnés, contours flous", '"noyaux fusionnés, contours flous"')
    path.write_bytes(text.encode(encoding))
    code, err = qc_cli(qc_cohort, "--reviews", str(path))
    assert code == 0, err
    assert verdicts_of(qc_cohort) == {"BRCA-00001": ("Unacceptable", "noyaux fusionnés, contours flous")}


def test_review_file_in_another_encoding_is_refused_naming_it(qc_cohort: Path) -> None:
    path = qc_cohort / "verdicts.csv"
    path.write_bytes(
        "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nBRCA-00001,yes,noyaux fusionnés\n".encode(
            "cp1252"
        )
    )
    code, err = qc_cli(qc_cohort, "--reviews", str(path))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error:") and str(path) in err and "UTF-8" in err and "line 2" in err, err
    assert not (qc_cohort / "qc" / "reviews" / "wsi_verdicts.csv").exists()


VERDICT_STORE_HEADER = "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment,Source"


@pytest.mark.parametrize(
    ("store", "content", "says"),
    [
        ("patch_reviews.csv", "WSI-ID,PatchIndex,X,Y,Adequate,Comment,Source\nBRCA-00001,zz,1,2,yes,,a\n", "line 2"),
        ("patch_reviews.csv", "WSI-ID,PatchIndex,X,Y,Adequate,Comment,Source\nBRCA-00001,0,1,2,maybe,,a\n", "line 2"),
        ("patch_reviews.csv", "WSI-ID,Adequate\nBRCA-00001,yes\n", "PatchIndex"),
        ("wsi_verdicts.csv", b"\x00\xff\xfe garbage\x81\n", "not UTF-8"),
        (
            "wsi_verdicts.csv",
            "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment,Source\nB,perhaps,,x\n",
            "line 2",
        ),
        (
            "wsi_verdicts.csv",
            "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment,Source\nB,No,,x,y\n",
            "line 2",
        ),
    ],
)
def test_damaged_review_store_is_refused_and_left_as_it_is(
    store: str, content: str | bytes, says: str, qc_cohort: Path
) -> None:
    """The store holds every review recorded so far: a damaged one is never rewritten (that would
    drop reviews); the QC stops, naming the file and what is wrong."""
    reviews = qc_cohort / "qc" / "reviews"
    reviews.mkdir(parents=True)
    data = content if isinstance(content, bytes) else content.encode()
    (reviews / store).write_bytes(data)
    verdicts = qc_cohort / "verdicts.csv"
    verdicts.write_text("WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nBRCA-00002,no,fine\n")
    for args in ([], ["--reviews", str(verdicts)]):
        code, err = qc_cli(qc_cohort, *args)
        assert code == 2 and "Traceback" not in err, err
        assert err.startswith("error:") and str(reviews / store) in err and says in err, err
        assert (reviews / store).read_bytes() == data
    assert not (qc_cohort / "qc" / "slides.csv").exists()


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
