"""``build_qc``: a run's folder in, ``DIR/qc/`` out (tables, review sheets, images, report)."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io.outputs.publish import atomic_write_json, atomic_write_text
from pipeline.io.outputs.spreadsheet import write_csv_atomic, write_frame_atomic
from pipeline.io.outputs.status import SlideStatus
from pipeline.qc._cohort import read_cohort
from pipeline.qc._patches import (
    N_PATCHES,
    SlidePatches,
    extract_review_patches,
    load_slide_patches,
)
from pipeline.qc._report import render_report
from pipeline.qc._reviews import (
    REVIEW_SHEET_COLUMNS,
    load_patch_store,
    load_verdict_store,
    parse_reviews,
    record_reviews,
)
from pipeline.qc._rules import (
    CANCER_TYPE,
    DEFAULT_OUTER_PERCENT,
    NOTE,
    NUM_BAD_REGIONS,
    NUM_NUCLEI,
    NUM_REGIONS,
    QC_RESULT,
    RESULT_FAILED,
    RESULT_NO_REGIONS,
    RESULT_PENDING,
    SCALE_OUTLIER,
    SIZE_MEAN,
    SIZE_STD,
    STATISTICS,
    TIERS,
    WSI_COMMENT,
    WSI_ID,
    WSI_UNACCEPTABLE,
    qc_result,
    scale_outliers,
    select_for_review,
    tier_for,
)

PATCH_MODES = ("all", "flagged", "none")
STATED_SOURCES = ("slide", "manifest")  # mpp_source values of a resolution the estimate only cross-checks
QC_FORMAT_VERSION = 1

SLIDES_TABLE = "slides.csv"
WSI_QC_TABLE = "wsi_qc.csv"
REGION_TABLE = "random_region_check.csv"
TIER_TABLE = "tiers.csv"
THRESHOLD_TABLE = "thresholds.csv"
REVIEW_SHEET = "review_sheet.csv"
WSI_REVIEW_SHEET = "wsi_review_sheet.csv"
REPORT = "report.html"

SLIDES_COLUMNS = (CANCER_TYPE, WSI_ID, QC_RESULT)
WSI_QC_COLUMNS = (
    WSI_ID,
    CANCER_TYPE,
    NUM_NUCLEI,
    SIZE_MEAN,
    SIZE_STD,
    NOTE,
    WSI_UNACCEPTABLE,
    WSI_COMMENT,
    "SelectedForReview",
    "Status",
    "MPP",  # the resolution the slide was segmented at (µm/px) ...
    "MPPSource",  # ... and where it came from: manifest, slide (metadata field), estimate, default
    "MPPEstimate",  # what the nuclei say (a cross-check when metadata gave the resolution)
    "Flags",  # the run's (low_resolution, scale_disagreement, mpp_default, artifacts, ...) and scale_outlier
    "ArtifactMM2",  # tissue excluded from segmentation as pen ink or folds
)
REGION_COLUMNS = (
    WSI_ID,
    CANCER_TYPE,
    NUM_BAD_REGIONS,
    NUM_REGIONS,
    "NumOfReviewedRegions",
    "PercentUnacceptable",
    "Tier",
    NOTE,
)
TIER_COLUMNS = (CANCER_TYPE, *TIERS, RESULT_PENDING, RESULT_NO_REGIONS, RESULT_FAILED, "Total")
THRESHOLD_COLUMNS = (
    "CancerType",
    "Statistic",
    "OuterPercent",
    "N",
    "K",
    "LowCut",
    "HighCut",
    "NumLow",
    "NumHigh",
    "Note",
)
WSI_SHEET_COLUMNS = (WSI_ID, CANCER_TYPE, NOTE, "Thumbnail", WSI_UNACCEPTABLE, WSI_COMMENT)
# Every table a build writes, by name: what ``read_qc_tables`` returns.
QC_TABLES = {
    "slides": SLIDES_TABLE,
    "wsi_qc": WSI_QC_TABLE,
    "random_region_check": REGION_TABLE,
    "tiers": TIER_TABLE,
    "thresholds": THRESHOLD_TABLE,
    "review_sheet": REVIEW_SHEET,
    "wsi_review_sheet": WSI_REVIEW_SHEET,
}


@contextlib.contextmanager
def _exclusive(qc_dir: Path) -> Iterator[None]:
    """One build of a qc folder at a time (two would race on the review store)."""
    lock_path = qc_dir / ".lock"
    with open(lock_path, "w") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _objects(column: pd.Series) -> list[Any]:
    """A column as a Python list (iterating Arrow-backed strings row by row is slow)."""
    return column.to_numpy(dtype=object).tolist()


class _Row:
    """Attribute access to one cohort row (cheaper than DataFrame.itertuples on Arrow strings)."""

    def __init__(self, values: dict[str, object]):
        self.__dict__.update(values)


def _rows(df: pd.DataFrame) -> list[Any]:
    columns = {c: _objects(df[c]) for c in df.columns}
    return [_Row({c: columns[c][i] for c in columns}) for i in range(len(df))]


@dataclass(frozen=True)
class _WsiQcRow:
    """One slide's row of wsi_qc.csv; the fields in the order of ``WSI_QC_COLUMNS``."""

    wsi_id: str
    cancer_type: str
    n_nuclei: Any
    size_mean: Any
    size_std: Any
    note: str
    unacceptable: str
    comment: str
    selected_for_review: str
    status: str
    mpp: Any
    mpp_source: str
    mpp_estimate: Any
    flags: str
    artifact_mm2: Any


@dataclass(frozen=True)
class _RegionRow:
    """One slide's row of random_region_check.csv; the fields in the order of ``REGION_COLUMNS``."""

    wsi_id: str
    cancer_type: str
    n_bad: int
    n_regions: int
    n_reviewed: int
    percent_unacceptable: float
    tier: str
    note: str


@dataclass(frozen=True)
class _SlideRow:
    """One slide's row of slides.csv; the fields in the order of ``SLIDES_COLUMNS``."""

    cancer_type: str
    wsi_id: str
    qc_result: str


@dataclass(frozen=True)
class _PatchSheetRow:
    """One review patch's row of review_sheet.csv (with its recorded review, if any); the fields in
    the order of ``REVIEW_SHEET_COLUMNS``."""

    wsi_id: str
    index: int
    x: int
    y: int
    w: int
    h: int
    image: str
    adequate: str
    comment: str


@dataclass(frozen=True)
class _WsiSheetRow:
    """One selected slide's row of wsi_review_sheet.csv; the fields in the order of ``WSI_SHEET_COLUMNS``."""

    wsi_id: str
    cancer_type: str
    note: str
    thumbnail: str
    unacceptable: str
    comment: str


@dataclass(frozen=True)
class _ThresholdRow:
    """One (cancer type, statistic)'s row of thresholds.csv; the fields in the order of ``THRESHOLD_COLUMNS``."""

    cancer_type: str
    statistic: str
    outer_percent: float
    n: int
    k: int
    low_cut: float
    high_cut: float
    n_low: int
    n_high: int
    note: str


@dataclass
class _QcRows:
    """The rows of the tables a build writes, gathered slide by slide."""

    wsi_qc: list[_WsiQcRow] = field(default_factory=list)
    region: list[_RegionRow] = field(default_factory=list)
    slides: list[_SlideRow] = field(default_factory=list)
    review_sheet: list[_PatchSheetRow] = field(default_factory=list)
    wsi_review_sheet: list[_WsiSheetRow] = field(default_factory=list)


@dataclass(frozen=True)
class _Selection:
    """What the statistics select for review: each ok slide's notes (why it is an outlier; empty
    when it is none), the cuts per cancer type and statistic, and each ok slide's scale note."""

    notes: dict[str, list[str]]
    cuts: list[Any]
    scale_notes: dict[str, str]


@dataclass(frozen=True)
class _RegionCounts:
    """A slide's sampled review regions: how many, how many reviewed, how many of those bad."""

    n_regions: int
    n_reviewed: int
    n_bad: int


def _by_position(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Dataclass rows as tuples, for the writers that take a table's cells by column position
    (shallow: ``dataclasses.astuple`` would deep-copy every cell of a cohort's tables)."""
    if not rows:
        return []
    names = [f.name for f in fields(rows[0])]
    return [tuple(getattr(row, name) for name in names) for row in rows]


def tier_table(slides: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2: per cancer type, slide counts per QCResult, plus a total row."""
    counts = pd.crosstab(slides[CANCER_TYPE], slides[QC_RESULT])
    counts = counts.reindex(columns=list(TIER_COLUMNS[1:-1]), fill_value=0)
    counts["Total"] = counts.sum(axis=1)
    counts.loc["All"] = counts.sum(axis=0)
    counts = counts.astype(int).reset_index().rename(columns={"index": CANCER_TYPE})
    counts.columns.name = None
    return counts


def build_qc(
    out_dir: Path,
    reviews: Sequence[Path] = (),
    outer_percent: float = DEFAULT_OUTER_PERCENT,
    seed: int = 0,
    *,
    patches: str = "all",
    n_patches: int = N_PATCHES,
    workers: int = 1,
    report: bool = True,
) -> Path:
    """Build (or rebuild) ``out_dir/qc`` from the slides finished so far.

    Parameters
    ----------
    out_dir : the run's output folder (holds ``slides/<slide_id>/stats.json``).
    reviews : patch review sheets and/or WSI verdict CSVs to fold in; validated first - if any
        row is malformed, ``ReviewError`` names every bad row and nothing is written.
    outer_percent : per-tail percent of each cancer type selected for review (paper: 2, then 4).
    seed : seed of the random review patches (recorded in ``qc/qc.json`` and each
        ``patches.json``); a slide's patches depend only on (seed, slide id).
    patches : "all" ok slides get review patches, only the "flagged" ones, or "none" (only
        patches already extracted are used).
    n_patches : patches per slide (paper: 15).
    workers : slides whose patches are extracted at once (threads).
    report : write report.html.

    Returns
    -------
    Path of the qc folder. Recorded reviews (``qc/reviews/``) are never removed by a rebuild.

    Raises
    ------
    ReviewError : a review file is malformed (nothing is recorded from any).
    ReviewStoreError : the review store is damaged (it is left as it is; nothing is written).

    A stats.json that is no slide's record (no ``slide_id``) is left out with a ``UserWarning``
    naming it, and listed in ``qc.json`` (``unusable_stats``).
    """
    if patches not in PATCH_MODES:
        raise ValueError(f"patches must be one of {PATCH_MODES}, got {patches!r}")
    out_dir = Path(out_dir)
    qc_dir = out_dir / "qc"
    qc_dir.mkdir(parents=True, exist_ok=True)
    reviews_dir = qc_dir / "reviews"
    with _exclusive(qc_dir):
        left_out: list[str] = []
        cohort = read_cohort(out_dir, left_out)
        for reason in left_out:
            warnings.warn(reason, UserWarning, stacklevel=2)
        is_ok = (cohort["status"] == SlideStatus.OK).to_numpy()
        cached = _sampled_patches(qc_dir, cohort, is_ok)
        if reviews:
            _record_new_reviews(reviews_dir, reviews, cached, cohort["slide_id"].tolist())
        patch_store = load_patch_store(reviews_dir)
        verdict_store = load_verdict_store(reviews_dir)
        ok_rows = cohort[is_ok]
        selection = _select(ok_rows, outer_percent)
        slide_patches = dict(cached)
        if patches != "none":
            todo = _patches_to_extract(ok_rows, selection.notes, patches)
            extract = partial(_extract_patches, out_dir, qc_dir, seed, n_patches, cached)
            slide_patches.update(_extract_all(extract, todo, workers))
        rows = _QcRows()
        for r in _rows(cohort):
            _add_slide(rows, r, selection, slide_patches.get(r.slide_id), patch_store, verdict_store)
        wsi_qc, slides, tiers = _write_tables(qc_dir, rows, selection.cuts, outer_percent)
        params = {
            "format_version": QC_FORMAT_VERSION,
            "outer_percent": outer_percent,
            "seed": seed,
            "n_patches": n_patches,
            "patches": patches,
            "n_slides": len(cohort),
            "n_ok": int(is_ok.sum()),
            "n_selected": int((wsi_qc["SelectedForReview"] == "yes").sum()),
            "n_patch_reviews_recorded": len(patch_store),
            "n_wsi_verdicts_recorded": len(verdict_store),
            "unusable_stats": left_out,  # stats.json files left out, and why
        }
        if report:
            wsi_qc_report = wsi_qc.copy()
            wsi_qc_report[QC_RESULT] = slides[QC_RESULT].to_numpy()
            html = render_report(qc_dir, wsi_qc_report, tiers, selection.cuts, slide_patches, params)
            atomic_write_text(qc_dir / REPORT, html)
        atomic_write_json(qc_dir / "qc.json", params, indent=1, sort_keys=True)
    return qc_dir


def _sampled_patches(qc_dir: Path, cohort: pd.DataFrame, is_ok: np.ndarray) -> dict[str, SlidePatches]:
    """The review patches already sampled for the ok slides (the ones a reviewer was shown), by
    slide id: reviews refer to these, and a rebuild reuses them rather than sampling anew."""
    cached: dict[str, SlidePatches] = {}
    for sid, ok in zip(cohort["slide_id"].tolist(), is_ok, strict=True):
        if ok:
            sp = load_slide_patches(qc_dir, sid)
            if sp is not None:
                cached[sid] = sp
    return cached


def _record_new_reviews(
    reviews_dir: Path, reviews: Sequence[Path], cached: dict[str, SlidePatches], ids: list[str]
) -> None:
    """Fold review files into the review store, first of all: a malformed sheet raises before
    anything is touched. Patch reviews are matched to the patches the reviewer was shown."""
    sampled = {sid: {p.index: (p.x, p.y) for p in sp.patches} for sid, sp in cached.items()}
    new_patch_reviews, new_verdicts = parse_reviews(reviews, sampled, ids)
    record_reviews(reviews_dir, new_patch_reviews, new_verdicts)


def _select(ok_rows: pd.DataFrame, outer_percent: float) -> _Selection:
    """The statistical selection (pure), per cancer type, over the ok slides: the outer tails of
    each statistic, and each stated resolution against what its cancer type's nuclei say of theirs
    (a scale outlier is noted among the slide's reasons for review)."""
    values = {s.column: ok_rows[s.field].to_numpy(dtype=np.float64) for s in STATISTICS}
    notes_ok, cuts = select_for_review(ok_rows["cancer_type"].tolist(), values, outer_percent)
    notes: dict[str, list[str]] = {sid: n for sid, n in zip(ok_rows["slide_id"], notes_ok, strict=True)}
    stated = ok_rows["mpp_source"].isin(STATED_SOURCES).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ok_rows["mpp_estimate"].to_numpy(np.float64) / ok_rows["mpp"].to_numpy(np.float64)
    ratios = np.where(stated, ratios, np.nan)
    scale_notes = dict(zip(ok_rows["slide_id"], scale_outliers(ok_rows["cancer_type"].tolist(), ratios), strict=True))
    for sid, note in scale_notes.items():
        if note:
            notes[sid].append(note)
    return _Selection(notes, cuts, scale_notes)


def _patches_to_extract(
    ok_rows: pd.DataFrame, notes: dict[str, list[str]], patches: str
) -> list[tuple[str, str, float]]:
    """(slide id, slide path, mpp) of the ok slides that get review patches: all of them, or with
    ``patches="flagged"`` those selected for review."""
    return [
        (sid, path, mpp)
        for sid, path, mpp in zip(
            _objects(ok_rows["slide_id"]), _objects(ok_rows["slide_path"]), ok_rows["mpp"].tolist(), strict=True
        )
        if patches == "all" or notes[sid]
    ]


def _extract_patches(
    out_dir: Path,
    qc_dir: Path,
    seed: int,
    n_patches: int,
    cached: dict[str, SlidePatches],
    item: tuple[str, str, float],
) -> SlidePatches:
    """One slide's review patches, from its file and its nucleus table (reusing those already
    sampled for it)."""
    sid, path, mpp = item
    nuclei = os.path.join(out_dir, "slides", sid, "nuclei.parquet")
    return extract_review_patches(qc_dir, sid, path, nuclei, mpp, seed, n_patches, cached.get(sid))


def _extract_all(
    extract: Callable[[tuple[str, str, float]], SlidePatches], todo: list[tuple[str, str, float]], workers: int
) -> dict[str, SlidePatches]:
    """``extract`` of each of ``todo``, on ``workers`` threads, by slide id."""
    # Slides without mpp metadata warn on opening; stats.json has their mpp. The filter is
    # set here, once, because catch_warnings is not thread-safe inside the workers.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no microns-per-pixel", category=UserWarning)
        if workers > 1 and len(todo) > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(extract, todo))
        else:
            results = [extract(item) for item in todo]
    return {sp.slide_id: sp for sp in results}


def _count_regions(
    sid: str, sp: SlidePatches | None, patch_store: dict[Any, Any], sheet: list[_PatchSheetRow]
) -> _RegionCounts:
    """A slide's review regions against the recorded reviews; each region's row of the review
    sheet (with its review, if any) is added to ``sheet``."""
    current = sp.patches if sp is not None else []
    n_reviewed = n_bad = 0
    for p, img in zip(current, sp.images if sp is not None else [], strict=True):
        rev = patch_store.get((sid, p.index, p.x, p.y))
        if rev is not None:
            n_reviewed += 1
            n_bad += rev.adequate == "no"
        sheet.append(
            _PatchSheetRow(
                sid, p.index, p.x, p.y, p.w, p.h, img, rev.adequate if rev else "", rev.comment if rev else ""
            )
        )
    return _RegionCounts(len(current), n_reviewed, n_bad)


def _note_and_selection(r: Any, notes: dict[str, list[str]]) -> tuple[str, bool]:
    """A slide's note in the tables and whether it is selected for review: an ok slide the run
    flagged (scale, artifacts) is reviewed like a statistical outlier; a failed one is not."""
    if r.status != SlideStatus.OK:
        return f"failed: {r.error}", False
    note = "; ".join([*notes[r.slide_id], *([r.warnings] if isinstance(r.warnings, str) and r.warnings else [])])
    return note, bool(notes[r.slide_id]) or (isinstance(r.flags, str) and bool(r.flags))


def _region_note(r: Any, sp: SlidePatches | None) -> str:
    """The random-region table's note: the patches' own, else why a slide has none."""
    if sp is not None:
        return sp.note
    return "no review patches extracted yet" if r.status == SlideStatus.OK else "failed slide"


def _wsi_qc_row(r: Any, note: str, verdict: Any, selected: bool, scale_outlier: bool) -> _WsiQcRow:
    """A slide's wsi_qc.csv row: its stats, its note and review verdict, and its flags (the run's
    and the cohort's scale outlier)."""
    cohort_flags = [SCALE_OUTLIER] if scale_outlier else []
    return _WsiQcRow(
        wsi_id=r.slide_id,
        cancer_type=r.cancer_type,
        n_nuclei=r.n_nuclei,
        size_mean=r.area_mean_px40x,
        size_std=r.area_std_px40x,
        note=note,
        unacceptable=verdict.verdict if verdict else "",
        comment=verdict.comment if verdict else "",
        selected_for_review="yes" if selected else "no",
        status=r.status,
        mpp=r.mpp,
        mpp_source=": ".join(v for v in (r.mpp_source, r.mpp_field) if isinstance(v, str) and v),
        mpp_estimate=r.mpp_estimate,
        flags=",".join([*([r.flags] if isinstance(r.flags, str) and r.flags else []), *cohort_flags]),
        artifact_mm2=r.artifact_mm2_total,
    )


def _add_slide(
    rows: _QcRows,
    r: Any,
    selection: _Selection,
    sp: SlidePatches | None,
    patch_store: dict[Any, Any],
    verdict_store: dict[str, Any],
) -> None:
    """A slide's rows of every table: its regions and their reviews, its QC result and tier, and
    (when selected) its row of the whole-slide review sheet."""
    sid, ctype = r.slide_id, r.cancer_type
    verdict = verdict_store.get(sid)
    v_text, v_comment = (verdict.verdict, verdict.comment) if verdict else ("", "")
    counts = _count_regions(sid, sp, patch_store, rows.review_sheet)
    result = qc_result(r.status, v_text, counts.n_bad, counts.n_reviewed, counts.n_regions)
    note, selected = _note_and_selection(r, selection.notes)
    complete = counts.n_regions and counts.n_reviewed == counts.n_regions
    tier = tier_for(counts.n_bad, counts.n_reviewed) if complete else ""
    scale_outlier = r.status == SlideStatus.OK and bool(selection.scale_notes[sid])
    rows.wsi_qc.append(_wsi_qc_row(r, note, verdict, selected, scale_outlier))
    pct = 100.0 * counts.n_bad / counts.n_reviewed if counts.n_reviewed else math.nan
    rows.region.append(
        _RegionRow(sid, ctype, counts.n_bad, counts.n_regions, counts.n_reviewed, pct, tier, _region_note(r, sp))
    )
    rows.slides.append(_SlideRow(ctype, sid, result))
    if selected:
        thumb = sp.thumbnail if sp is not None else ""
        rows.wsi_review_sheet.append(_WsiSheetRow(sid, ctype, note, thumb, v_text, v_comment))


def _write_tables(
    qc_dir: Path, rows: _QcRows, cuts: Sequence[Any], outer_percent: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write every table of the build (rounded as published); returns wsi_qc, slides and tiers,
    which the report shows."""
    wsi_qc = pd.DataFrame(_by_position(rows.wsi_qc), columns=list(WSI_QC_COLUMNS))
    wsi_qc[NUM_NUCLEI] = wsi_qc[NUM_NUCLEI].astype("Int64")
    wsi_qc[SIZE_MEAN] = wsi_qc[SIZE_MEAN].round(2)
    wsi_qc[SIZE_STD] = wsi_qc[SIZE_STD].round(2)
    region = pd.DataFrame(_by_position(rows.region), columns=list(REGION_COLUMNS))
    region["PercentUnacceptable"] = region["PercentUnacceptable"].round(2)
    slides = pd.DataFrame(_by_position(rows.slides), columns=list(SLIDES_COLUMNS))
    tiers = tier_table(slides)
    thresholds = pd.DataFrame(
        _by_position(
            [
                _ThresholdRow(
                    c.cancer_type,
                    c.statistic,
                    outer_percent,
                    c.n,
                    c.k,
                    c.low_cut,
                    c.high_cut,
                    c.n_low,
                    c.n_high,
                    c.note,
                )
                for c in cuts
            ]
        ),
        columns=list(THRESHOLD_COLUMNS),
    )
    thresholds[["LowCut", "HighCut"]] = thresholds[["LowCut", "HighCut"]].astype(np.float64).round(4)
    write_frame_atomic(qc_dir / SLIDES_TABLE, slides)
    write_frame_atomic(qc_dir / WSI_QC_TABLE, wsi_qc)
    write_frame_atomic(qc_dir / REGION_TABLE, region)
    write_frame_atomic(qc_dir / TIER_TABLE, tiers)
    write_frame_atomic(qc_dir / THRESHOLD_TABLE, thresholds)
    write_csv_atomic(qc_dir / REVIEW_SHEET, REVIEW_SHEET_COLUMNS, _by_position(rows.review_sheet))
    write_csv_atomic(qc_dir / WSI_REVIEW_SHEET, WSI_SHEET_COLUMNS, _by_position(rows.wsi_review_sheet))
    return wsi_qc, slides, tiers


def read_qc_tables(qc_dir: Path) -> dict[str, pd.DataFrame]:
    """The tables of a built qc folder (``QC_TABLES``: name → DataFrame). Slide ids and cancer
    types stay text (an id ``NA`` is not a missing value); an empty cell is a missing value."""
    qc_dir = Path(qc_dir)
    if not (qc_dir / "qc.json").is_file():  # written last: the build is complete
        raise FileNotFoundError(f"{qc_dir} holds no complete QC build (no qc.json)")
    text = {WSI_ID: str, CANCER_TYPE: str}
    return {
        name: pd.read_csv(qc_dir / file, dtype=text, keep_default_na=False, na_values=[""])
        for name, file in QC_TABLES.items()
    }
