"""Reading a run's per-slide results (``DIR/slides/<slide_id>/stats.json``) into one table."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io.outputs.contents import check_count
from pipeline.io.outputs.stats import NUMERIC_FIELDS, TEXT_FIELDS
from pipeline.io.outputs.status import SlideStatus
from pipeline.manifest import bidi_controls

# stats.json keys the QC reads (one schema for every slide); the numeric ones are null for a failed slide.
UNKNOWN_CANCER_TYPE = "UNKNOWN"  # the manifest's default cancer type

# Lists and mappings of stats.json, flattened for the table: flags and warnings joined, artifact
# areas summed over their kinds.
FLAT_FIELDS = ("flags", "warnings", "artifact_mm2_total")
COLUMNS = TEXT_FIELDS + NUMERIC_FIELDS + FLAT_FIELDS


def _as_float(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


class NotASlideRecord(ValueError):
    """A stats.json that names no slide (no ``slide_id``): not a record of this pipeline's schema."""


def shown_cancer_type(text: str) -> str:
    """A cancer type as the QC groups and shows it: Unicode NFC (two spellings of one name are one
    group), each bidirectional control character written as its code (it would show the text in
    another order than it is). The manifest refuses such types; records made before may hold them.

    >>> shown_cancer_type("Cafe\u0301") == "Caf\u00e9", shown_cancer_type("\u202eDAUL")
    (True, '<U+202E>DAUL')
    """
    text = unicodedata.normalize("NFC", text)
    for code in bidi_controls(text):
        text = text.replace(chr(int(code[2:], 16)), f"<{code}>")
    return text


def read_slide_stats(folder: str | Path) -> dict[str, Any]:
    """One slide's stats.json as a flat record; an unreadable file becomes a failed slide, and a
    file without ``slide_id`` raises ``NotASlideRecord`` naming it.

    The folder name is the slide's id (it is what every other output path uses).
    """
    record: dict[str, Any] = {k: None for k in TEXT_FIELDS}
    record.update({k: float("nan") for k in NUMERIC_FIELDS})
    record.update(flags="", warnings="", artifact_mm2_total=float("nan"))
    record["slide_id"] = os.path.basename(folder)
    try:
        with open(os.path.join(folder, "stats.json"), encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        record.update(status=SlideStatus.FAILED, error=f"stats.json unreadable: {exc}", cancer_type=UNKNOWN_CANCER_TYPE)
        return record
    if not isinstance(data.get("slide_id"), str) or not data["slide_id"].strip():
        raise NotASlideRecord(
            f"{os.path.join(folder, 'stats.json')} has no slide_id: not a slide's record, left out of the QC "
            "(rerun the run to redo that slide)"
        )
    for k in TEXT_FIELDS[1:]:
        v = data.get(k)
        record[k] = None if v is None else str(v)
    for k in NUMERIC_FIELDS:
        record[k] = _as_float(data.get(k))
    record["flags"] = ",".join(str(f) for f in data.get("flags") or [])
    record["warnings"] = "; ".join(str(w) for w in data.get("warnings") or [])
    artifacts = data.get("artifact_mm2")
    if isinstance(artifacts, dict):
        record["artifact_mm2_total"] = sum(_as_float(v) for v in artifacts.values())
    record["cancer_type"] = shown_cancer_type(record["cancer_type"] or UNKNOWN_CANCER_TYPE)
    try:
        status = SlideStatus((record["status"] or "").lower())
    except ValueError:
        record["error"] = f"unknown status {record['status']!r} in stats.json"
        status = SlideStatus.FAILED
    # a run's record (not a generated one): its count is its table's
    if status == SlideStatus.OK and data.get("inputs"):
        mismatch = check_count(Path(folder), data.get("n_nuclei"))
        if mismatch is not None:  # none of its figures is the slide's: shown as a failed slide's, empty
            status = SlideStatus.FAILED
            record["error"] = f"{mismatch}: the record does not match the slide's outputs (rerun the run to redo it)"
            record.update({k: float("nan") for k in NUMERIC_FIELDS}, artifact_mm2_total=float("nan"))
    if status == SlideStatus.FAILED and not record["error"]:
        record["error"] = "failed (no reason recorded)"
    record["status"] = status
    return record


def read_cohort(out_dir: Path, left_out: list[str] | None = None) -> pd.DataFrame:
    """Every completed slide of a run, one row each, sorted by (cancer_type, slide_id).

    Folders whose name starts with "." are slides still being written and are
    skipped, as are folders without a stats.json yet. Works on partial cohorts: just what is
    there. A stats.json that is no slide's record is left out, and why is appended to ``left_out``.
    """
    slides_dir = os.path.join(out_dir, "slides")  # plain strings: pathlib costs ~1 s per 5,000 slides
    records = []
    if os.path.isdir(slides_dir):
        with os.scandir(slides_dir) as it:
            entries = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        for name in entries:
            folder = os.path.join(slides_dir, name)
            if os.path.exists(os.path.join(folder, "stats.json")):
                try:
                    records.append(read_slide_stats(folder))
                except NotASlideRecord as exc:
                    if left_out is not None:
                        left_out.append(str(exc))
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for k in (*NUMERIC_FIELDS, "artifact_mm2_total"):
        df[k] = df[k].astype(np.float64)
    return df.sort_values(["cancer_type", "slide_id"], kind="stable").reset_index(drop=True)
