"""Metric definitions on hand-made label images (perfect, empty, split, merged, shifted)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.metrics import (
    aggregated_jaccard_index,
    count_mae_percent,
    count_pearson_r,
    dice,
    image_metrics,
    instance_dice,
    panoptic_quality,
    weighted_dice,
)
from pipeline.evaluation.scoring import score_image, summarise


def two_nuclei() -> np.ndarray:
    lab = np.zeros((20, 20), dtype=np.int32)
    lab[2:6, 2:7] = 1  # 20 px
    lab[10:14, 10:15] = 2  # 20 px
    return lab


ALL = (dice, instance_dice, aggregated_jaccard_index, panoptic_quality)


@pytest.mark.parametrize("metric", ALL)
def test_perfect_segmentation_scores_one(metric):
    t = two_nuclei()
    relabelled = np.where(t == 1, 7, np.where(t == 2, 3, 0))  # ids need not agree
    assert metric(t, relabelled) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ALL)
def test_both_empty_scores_one(metric):
    z = np.zeros((8, 8), dtype=np.int32)
    assert metric(z, z) == 1.0


@pytest.mark.parametrize("metric", ALL)
@pytest.mark.parametrize("which", ["pred", "truth"])
def test_one_side_empty_scores_zero(metric, which):
    t, z = two_nuclei(), np.zeros((20, 20), dtype=np.int32)
    args = (t, z) if which == "pred" else (z, t)
    assert metric(*args) == 0.0


def test_split_nucleus():
    truth = np.zeros((10, 10), dtype=np.int32)
    truth[2:6, 2:7] = 1  # 4×5 = 20 px
    pred = np.zeros_like(truth)
    pred[2:4, 2:7] = 1  # two halves of 10 px
    pred[4:6, 2:7] = 2
    assert dice(truth, pred) == pytest.approx(1.0)  # pixel Dice is blind to the split
    # AJI: G matched to one half (C = 10, U = 20); the unused half adds 10 to U.
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(10 / 30)
    # PQ: IoU of each half = 0.5, not > 0.5 → no match: TP 0, FP 2, FN 1.
    assert panoptic_quality(truth, pred) == 0.0
    # Object Dice: every pairing has Dice 2·10/(20 + 10) = 2/3, in both directions.
    assert instance_dice(truth, pred) == pytest.approx(2 / 3)


def test_merged_nuclei():
    truth = np.zeros((10, 10), dtype=np.int32)
    truth[2:4, 2:7] = 1
    truth[4:6, 2:7] = 2
    pred = (truth > 0).astype(np.int32)
    assert dice(truth, pred) == pytest.approx(1.0)
    # AJI: both G matched to the one S: C = 10 + 10, U = 20 + 20.
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(0.5)
    assert panoptic_quality(truth, pred) == 0.0
    assert instance_dice(truth, pred) == pytest.approx(2 / 3)


def test_shifted_nucleus_and_false_positive():
    truth = np.zeros((12, 12), dtype=np.int32)
    truth[0:4, 0:4] = 1  # 16 px
    pred = np.zeros_like(truth)
    pred[1:5, 0:4] = 1  # overlap 12, union 20
    pred[8:10, 8:10] = 2  # a 4 px false positive
    assert dice(truth, pred) == pytest.approx(2 * 12 / (16 + 20))
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(12 / (20 + 4))
    # PQ = IoU sum / (TP + FP/2 + FN/2) = 0.6 / 1.5
    assert panoptic_quality(truth, pred) == pytest.approx(0.6 / 1.5)
    # Object Dice: G side 2·12/32; S side weights 16/20 and 4/20, the FP scores 0.
    assert instance_dice(truth, pred) == pytest.approx(0.5 * (0.75 + 0.8 * 0.75))
    m = image_metrics(truth, pred)
    assert (m.truth_count, m.pred_count) == (1, 2)
    assert m.aji == pytest.approx(0.5)


def test_count_statistics():
    assert count_pearson_r(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(1.0)
    assert count_pearson_r(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert count_mae_percent(np.array([10, 20]), np.array([12, 18])) == pytest.approx(2 / 15 * 100)
    assert np.isnan(count_pearson_r(np.array([5]), np.array([4])))


def test_weighted_dice_weights_by_both_counts():
    # patch 1: Dice 1 with 1 + 1 nuclei; patch 2: Dice 0 with 3 + 3 → (1·2 + 0·6) / 8
    assert weighted_dice(np.array([1.0, 0.0]), np.array([1, 3]), np.array([1, 3])) == pytest.approx(0.25)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        dice(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_score_image_patches_and_summary():
    truth = np.zeros((100, 100), dtype=np.int32)
    truth[10:20, 10:20] = 1
    truth[60:70, 60:70] = 2
    pred = truth.copy()
    pred[60:70, 60:70] = 0  # one nucleus missed, in the lower-right patch
    s = score_image("img", truth, pred, patch=50)
    assert len(s.patches) == 4
    counts = {(p.row, p.col): (p.truth_count, p.pred_count) for p in s.patches}
    assert counts[(0, 0)] == (1, 1) and counts[(50, 50)] == (1, 0)
    overall = summarise([s])
    # patch Dice: (0,0) 1 with weight 2, (50,50) 0 with weight 1, empty patches weight 0
    assert overall["dice"] == pytest.approx(2 / 3)
    assert overall["mae_percent"] == pytest.approx((1 / 4) / (2 / 4) * 100)
    assert overall["aji"] == pytest.approx(100 / 200)
