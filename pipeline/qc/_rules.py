"""The QC rules of Hou et al. (Sci. Data 2020) as pure functions: no files, no slides.

Two decisions are made here and nowhere else:

* which slides a cohort's statistics select for visual review (``select_for_review``), and
* which tier a slide's reviewed regions put it in (``tier_for``) and what the slide's final
  ``QCResult`` is (``qc_result``).

The outer-percent cut, exactly
------------------------------
For one statistic within one cancer type, take the ``n`` slides that have a finite value,
sort the values ascending ``v[0] <= ... <= v[n-1]`` and let ``k = floor(n * p / 100)``
(``p`` the outer percent, computed in exact rational arithmetic, so 150 slides at 2 % give
``k = 3``). Then

* the *low* tail is every slide with ``x < v[k]``  (at most the ``k`` smallest), and
* the *high* tail is every slide with ``x > v[n-1-k]`` (at most the ``k`` largest).

Values tied with the cut value are never selected, so a tail holds *at most* ``k`` slides
(fewer when ties straddle the cut; a constant statistic selects nothing). When ``k = 0`` -
fewer than ``100 / p`` slides, i.e. a group smaller than 50 slides at 2 % - the group has no
outer ``p`` % and nothing is selected by that statistic; the thresholds table says so.
The paper's "outer 2 %" is read as 2 % in *each* tail that is examined.

Beyond the paper, an ok slide with zero nuclei (or a missing statistic) is always selected:
no percentile is needed to know it must be looked at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipeline.io.outputs.status import SlideStatus

# ------------------------------------------------------------------ column names (the paper) ----

WSI_ID = "WSI-ID"
CANCER_TYPE = "CancerType"
QC_RESULT = "QCResult"
NUM_NUCLEI = "NumNucleiSample"
SIZE_MEAN = "SizeOfNuclei-Average"
SIZE_STD = "SizeOfNuclei-Stddev"
NOTE = "Note"
WSI_UNACCEPTABLE = "SegmentationUnacceptableOrNot"
WSI_COMMENT = "VisualAssessmentComment"
NUM_BAD_REGIONS = "NumOfUnacceptableSegRegions"
NUM_REGIONS = "NumOfSampledRegions"

# ----------------------------------------------------------------------------- selection ----

# Paper: slides in the outer 2 % of a statistic's distribution (per cancer type) are reviewed;
# it widened this to 4 % for a cancer type when many of the selected slides proved bad.
DEFAULT_OUTER_PERCENT = 2.0

LOW, HIGH = "low", "high"


@dataclass(frozen=True)
class Statistic:
    """A per-slide statistic the selection looks at.

    Attributes
    ----------
    column : the paper's column name in the WSI QC table.
    field : the key in stats.json it is read from.
    tails : which tails select a slide.
    """

    column: str
    field: str
    tails: tuple[str, ...]


# Sizes in pixels at 40x (0.25 µm/px), the unit of the paper's tables.
STATISTICS: tuple[Statistic, ...] = (
    Statistic(NUM_NUCLEI, "n_nuclei", (LOW, HIGH)),
    Statistic(SIZE_MEAN, "area_mean_px40x", (LOW, HIGH)),
    # Paper: a small spread of nucleus sizes alone is not a sign of failure; only the high tail.
    Statistic(SIZE_STD, "area_std_px40x", (HIGH,)),
)


@dataclass(frozen=True)
class TailCut:
    """Where the outer-percent cut of one statistic in one cancer type lies.

    ``low_cut`` / ``high_cut`` are ``v[k]`` / ``v[n-1-k]`` (None when that tail is not examined
    or ``k == 0``); a slide is selected when strictly below ``low_cut`` or above ``high_cut``.
    """

    cancer_type: str
    statistic: str
    n: int
    k: int
    low_cut: float | None
    high_cut: float | None
    n_low: int
    n_high: int

    @property
    def note(self) -> str:
        if self.n == 0:
            return "no values"
        if self.k == 0:
            return "group too small for this outer percent: nothing selected"
        return ""


def tail_size(n: int, outer_percent: float) -> int:
    """``k = floor(n * p / 100)`` in exact arithmetic (no 2.9999 → 2 surprises)."""
    if not 0 <= outer_percent < 50:
        raise ValueError(f"outer percent must be in [0, 50), got {outer_percent}")
    return math.floor(n * Fraction(str(outer_percent)) / 100)


def outer_cut(
    values: np.ndarray, outer_percent: float, tails: Sequence[str] = (LOW, HIGH)
) -> tuple[int, int, float | None, float | None]:
    """The outer-percent cut of one group of values (see the module docstring).

    Parameters
    ----------
    values : 1-D float array of finite values (one per slide).
    outer_percent : ``p`` in percent, per tail.
    tails : which tails are examined ("low", "high").

    Returns
    -------
    n, k, low_cut, high_cut
        A value is in the low tail when ``< low_cut``, in the high tail when ``> high_cut``.

    Examples
    --------
    >>> import numpy as np
    >>> outer_cut(np.arange(100.0), 2.0)
    (100, 2, 2.0, 97.0)
    >>> outer_cut(np.arange(49.0), 2.0)  # fewer than 50 slides: no outer 2 %
    (49, 0, None, None)
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = int(v.size)
    k = tail_size(n, outer_percent)
    if k == 0:
        return n, 0, None, None
    low = float(v[k]) if LOW in tails else None
    high = float(v[n - 1 - k]) if HIGH in tails else None
    return n, k, low, high


def selection_note(statistic: str, direction: str, outer_percent: float) -> str:
    """The Note a selected slide carries, e.g. ``NumNucleiSample low (outer 2%)``."""
    return f"{statistic} {direction} (outer {outer_percent:g}%)"


def select_for_review(
    cancer_types: Sequence[str],
    values: dict[str, np.ndarray],
    outer_percent: float = DEFAULT_OUTER_PERCENT,
    statistics: Sequence[Statistic] = STATISTICS,
) -> tuple[list[list[str]], list[TailCut]]:
    """Select slides for visual review, per cancer type.

    Parameters
    ----------
    cancer_types : one cancer type per slide (ok slides only).
    values : statistic column name → float array aligned with ``cancer_types`` (NaN = missing).
    outer_percent : per-tail percent of each group that is selected.
    statistics : the statistics and tails examined.

    Returns
    -------
    notes : per slide, the list of reasons it was selected (empty = not selected).
    cuts : one ``TailCut`` per (cancer type, statistic), sorted by cancer type.
    """
    types = np.asarray(list(cancer_types), dtype=object)
    notes: list[list[str]] = [[] for _ in range(types.size)]
    cuts: list[TailCut] = []
    for ctype in sorted(set(types.tolist())):
        members = np.flatnonzero(types == ctype)
        for stat in statistics:
            x = np.asarray(values[stat.column], dtype=np.float64)[members]
            finite = np.isfinite(x)
            n, k, low, high = outer_cut(x[finite], outer_percent, stat.tails)
            n_low = n_high = 0
            for j, idx in enumerate(members):
                if not finite[j]:
                    continue
                if low is not None and x[j] < low:
                    notes[idx].append(selection_note(stat.column, LOW, outer_percent))
                    n_low += 1
                if high is not None and x[j] > high:
                    notes[idx].append(selection_note(stat.column, HIGH, outer_percent))
                    n_high += 1
            cuts.append(TailCut(str(ctype), stat.column, n, k, low, high, n_low, n_high))
    # Beyond the paper: no nuclei at all, or a missing statistic, always deserves a look.
    for stat in statistics:
        x = np.asarray(values[stat.column], dtype=np.float64)
        for idx in np.flatnonzero(~np.isfinite(x)):
            notes[idx].append(f"{stat.column} missing")
        if stat.column == NUM_NUCLEI:
            for idx in np.flatnonzero(x == 0):
                notes[idx].append(f"{NUM_NUCLEI} zero")
    return notes, cuts


# ------------------------------------------------------------------- scale within a cohort ----

# A slide's resolution is cross-checked by an estimate from its own nuclei (pipeline.slide.scale).
# Nucleus size differs between tissues, so the estimate/metadata ratio of correctly labelled slides
# spreads over 0.63-2.18 (shipped model 1.4.0); slides of one tissue share much of that bias (on the MoNuSeg organs the
# spread of log ratios around the organ's median is 0.66 of that around the overall median). So a
# slide is compared with its cancer type's median ratio, the paper's outlier logic applied to scale.
# At 1.6x: 2.5 % of correctly labelled slides flagged, 78 % of slides labelled 2x wrong caught, all
# labelled 4x wrong (1.5x: 4.7 % and 88 %; 1.8x: 0 % and 60 %; benchmarks/RESULTS-scale.md).
SCALE_COHORT_FACTOR = 1.6
# The fewest slides with a stated resolution and an estimate a cancer type needs for a median: with
# three, one mislabelled slide cannot move it off the two others.
SCALE_COHORT_MIN_SLIDES = 3
SCALE_OUTLIER = "scale_outlier"  # the flag the cohort QC adds to such a slide
SCALE_RATIO = "MPPEstimate/MPP"


def scale_outliers(
    cancer_types: Sequence[str],
    ratios: np.ndarray,
    factor: float = SCALE_COHORT_FACTOR,
    min_slides: int = SCALE_COHORT_MIN_SLIDES,
) -> list[str]:
    """Slides whose estimate/metadata resolution ratio lies more than ``factor`` from their cancer
    type's median ratio: per slide, the reason (empty: not an outlier).

    Parameters
    ----------
    cancer_types : one cancer type per slide.
    ratios : the slide's resolution estimated from its nuclei over the one it was segmented at, for
        slides whose resolution was stated (metadata or manifest); NaN where there is none.
    factor : how far from the median (either way, as a factor) a ratio is an outlier.
    min_slides : a cancer type with fewer finite ratios has no median to compare with.

    Examples
    --------
    >>> r = np.array([1.3, 1.2, 1.4, 2.7, 1.25])  # one type's tissue reads 1.3x; one slide labelled 2x fine
    >>> scale_outliers(["KIRC"] * 5, r)[3]
    'scale_outlier: MPPEstimate/MPP 2.70 is 2.08× the KIRC median 1.30 (outside 1.6×): is its mpp right?'
    >>> [bool(n) for n in scale_outliers(["KIRC"] * 5, r)]
    [False, False, False, True, False]
    """
    types = np.asarray(list(cancer_types), dtype=object)
    x = np.asarray(ratios, dtype=np.float64)
    notes = [""] * types.size
    for ctype in sorted(set(types.tolist())):
        members = np.flatnonzero((types == ctype) & np.isfinite(x) & (x > 0))
        if members.size < min_slides:
            continue
        median = float(np.median(x[members]))
        for idx in members:
            off = x[idx] / median
            if not 1 / factor <= off <= factor:
                notes[idx] = (
                    f"{SCALE_OUTLIER}: {SCALE_RATIO} {x[idx]:.2f} is {off:.2f}× the {ctype} median {median:.2f} "
                    f"(outside {factor:g}×): is its mpp right?"
                )
    return notes


# --------------------------------------------------------------------------------- tiers ----

TIER_BEST = "Best"
TIER_GOOD = "Good"
TIER_ADEQUATE = "Adequate"
TIER_PROBLEMATIC = "Problematic"
TIER_UNACCEPTABLE = "Unacceptable"
TIERS = (TIER_BEST, TIER_GOOD, TIER_ADEQUATE, TIER_PROBLEMATIC, TIER_UNACCEPTABLE)

# Paper (Table 2): Best 0 %, Good ≤ 6.67 %, Adequate ≤ 13.3 %, Problematic ≤ 20 % of the sampled
# regions unacceptable, Unacceptable above. Those percentages are 0, 1, 2 and 3 bad regions out of
# the paper's 15 per slide, rounded; the bounds are kept as exact fractions so that 2 of 15
# (13.33 %) is Adequate, as in the paper, and not pushed past a rounded 13.3 %.
TIER_UPPER_BOUNDS: tuple[tuple[str, Fraction], ...] = (
    (TIER_BEST, Fraction(0)),
    (TIER_GOOD, Fraction(1, 15)),
    (TIER_ADEQUATE, Fraction(2, 15)),
    (TIER_PROBLEMATIC, Fraction(3, 15)),
)


def tier_for(n_unacceptable: int, n_regions: int) -> str:
    """The paper's tier for ``n_unacceptable`` bad regions out of ``n_regions`` reviewed.

    Examples
    --------
    >>> [tier_for(b, 15) for b in range(5)]
    ['Best', 'Good', 'Adequate', 'Problematic', 'Unacceptable']
    """
    if n_regions <= 0:
        raise ValueError("a tier needs at least one reviewed region")
    if not 0 <= n_unacceptable <= n_regions:
        raise ValueError(f"{n_unacceptable} unacceptable regions out of {n_regions}")
    share = Fraction(n_unacceptable, n_regions)
    for name, bound in TIER_UPPER_BOUNDS:
        if share <= bound:
            return name
    return TIER_UNACCEPTABLE


# Paper: a reviewed patch is adequate when the segmentation's precision and recall are both at
# least 75 % (judged by eye); the review sheet's Adequate column records that judgement.
ADEQUATE_MIN_PRECISION_RECALL = 0.75

# QCResult values besides the tiers.
RESULT_FAILED = "Failed"  # the pipeline could not segment the slide (reason in the WSI QC Note)
RESULT_PENDING = "Pending review"  # not every sampled region has been reviewed yet
RESULT_NO_REGIONS = "No regions"  # nothing could be sampled (slide file missing, no tissue)

VERDICT_UNACCEPTABLE = "Unacceptable"
VERDICT_ACCEPTABLE = "Acceptable"


def qc_result(status: str, wsi_verdict: str, n_unacceptable: int, n_reviewed: int, n_regions: int) -> str:
    """A slide's final QCResult.

    A failed slide is ``Failed``; a slide whose whole-slide review says the segmentation is
    unacceptable is ``Unacceptable`` (paper: "> 20 % or failed WSI review"); otherwise the tier
    of its random regions once every sampled region is reviewed (or ``Unacceptable`` as soon as
    the bad ones alone exceed 20 % of those sampled), else ``Pending review``.
    """
    if status != SlideStatus.OK:
        return RESULT_FAILED
    if wsi_verdict == VERDICT_UNACCEPTABLE:
        return TIER_UNACCEPTABLE
    if n_regions == 0:
        return RESULT_NO_REGIONS
    if n_reviewed < n_regions:
        # Already past the last bound even if every remaining region proves adequate.
        if Fraction(n_unacceptable, n_regions) > TIER_UPPER_BOUNDS[-1][1]:
            return TIER_UNACCEPTABLE
        return RESULT_PENDING
    return tier_for(n_unacceptable, n_reviewed)
