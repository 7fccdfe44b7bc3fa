"""Cohort quality control, after Hou et al. (Sci. Data 2020).

``build_qc(DIR)`` (or ``python -m pipeline.qc DIR``) turns a run's per-slide statistics into
``DIR/qc/``:

* ``slides.csv`` (CancerType, WSI-ID, QCResult), ``wsi_qc.csv`` (NumNucleiSample,
  SizeOfNuclei-Average, SizeOfNuclei-Stddev, Note, SegmentationUnacceptableOrNot,
  VisualAssessmentComment), ``random_region_check.csv`` (NumOfUnacceptableSegRegions,
  NumOfSampledRegions, tier), ``tiers.csv`` (the paper's Table 2) and ``thresholds.csv``
  (where each outer-percent cut lies);
* ``review_sheet.csv`` (one row per random patch, ``Adequate`` to fill with yes/no) and
  ``wsi_review_sheet.csv`` (the selected slides, verdict to fill), with the review images in
  ``patches/<slide_id>/``;
* ``reviews/``: every review folded in so far (never removed by a rebuild);
* ``report.html``: one self-contained page for the pathologist.

Beyond the paper's statistics, a slide whose stated resolution disagrees with what its nuclei say
by much more than its cancer type's other slides do is flagged ``scale_outlier`` (``scale_outliers``).

The rules (selection, scale outliers, tiers, QCResult) are pure functions in ``pipeline.qc._rules``; the
file work lives in the other private modules.
"""

from pipeline.qc._build import QC_TABLES, build_qc, read_qc_tables, tier_table
from pipeline.qc._patches import Patch, patch_side_level0, render_review_image, sample_patches, slide_rng
from pipeline.qc._reviews import ReviewError, ReviewStoreError, parse_reviews
from pipeline.qc._rules import (
    STATISTICS,
    TIER_UPPER_BOUNDS,
    TIERS,
    TailCut,
    outer_cut,
    qc_result,
    scale_outliers,
    select_for_review,
    selection_note,
    tail_size,
    tier_for,
)

__all__ = [
    "QC_TABLES",
    "STATISTICS",
    "TIERS",
    "TIER_UPPER_BOUNDS",
    "Patch",
    "ReviewError",
    "ReviewStoreError",
    "TailCut",
    "build_qc",
    "outer_cut",
    "parse_reviews",
    "patch_side_level0",
    "qc_result",
    "read_qc_tables",
    "render_review_image",
    "sample_patches",
    "scale_outliers",
    "select_for_review",
    "selection_note",
    "slide_rng",
    "tail_size",
    "tier_for",
    "tier_table",
]
