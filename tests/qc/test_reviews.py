"""Review files and the review store (pipeline.qc._reviews): spreadsheet encodings and
delimiters are read, another encoding is refused naming it, a damaged store is left as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import qc_cli


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
