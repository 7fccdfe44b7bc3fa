"""The QC's rules (pipeline.qc._rules): the outer-percent cut, selection for review, tiers, the
result of a slide, scale outliers; pure functions on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.qc import (
    outer_cut,
    qc_result,
    scale_outliers,
    select_for_review,
    tail_size,
    tier_for,
)
from tests.qc.conftest import KIDNEY_RATIOS, LIVER_RATIOS


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


def test_rules_docstring_examples() -> None:
    import doctest

    import pipeline.qc._rules as rules

    assert doctest.testmod(rules).failed == 0
