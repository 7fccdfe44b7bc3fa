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


def test_error_classes_on_hand_made_labels() -> None:
    """Each object lands in exactly one class: a match, a merge of two nuclei, a nucleus split in
    two, a fragment (false positive) and a nucleus nobody found (miss)."""
    from pipeline.evaluation.errors import error_counts

    truth = np.zeros((40, 40), dtype=np.int32)
    truth[2:8, 2:8] = 1  # matched exactly
    truth[2:8, 12:16], truth[2:8, 16:20] = 2, 3  # two touching nuclei, found as one
    truth[12:20, 2:12] = 4  # one nucleus, found as two halves
    truth[30:36, 30:36] = 5  # not found
    pred = np.zeros_like(truth)
    pred[2:8, 2:8] = 10
    pred[2:8, 12:20] = 11
    pred[12:20, 2:7], pred[12:20, 7:12] = 12, 13
    pred[25:27, 2:4] = 14  # a 4-px fragment over nothing
    e = error_counts(truth, pred)
    assert (e.matched, e.merged, e.split, e.false_positive, e.missed) == (1, 1, 1, 1, 1)
    assert (e.n_true, e.n_pred) == (5, 5)
    assert e.precision == 0.2 and e.recall == 0.2
    assert e.areas == {"false_positive": [4], "missed": [36], "merged": [48], "split": [80]}
    both = e + e
    assert (both.false_positive, both.n_pred, both.areas["missed"]) == (2, 10, [36, 36])


def test_errors_are_empty_for_a_perfect_segmentation_and_all_misses_for_none() -> None:
    from pipeline.evaluation.errors import error_counts

    lab = two_nuclei()
    perfect = error_counts(lab, lab)
    assert (perfect.matched, perfect.false_positive, perfect.missed, perfect.precision, perfect.recall) == (
        2,
        0,
        0,
        1.0,
        1.0,
    )
    none = error_counts(lab, np.zeros_like(lab))
    assert (none.matched, none.missed, none.recall, none.areas["missed"]) == (0, 2, 0.0, [20, 20])


def test_evaluate_errors_flag_prints_and_writes_the_error_table(tmp_path, capsys) -> None:
    import json

    import tifffile

    from pipeline.cli.evaluate import main

    truth = two_nuclei()
    pred = truth.copy()
    pred[16:19, 16:19] = 7  # a false positive of 9 px
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "pred" / "img_labels.tif", pred)
    tifffile.imwrite(tmp_path / "truth" / "img_labels.tif", truth)
    out = tmp_path / "scores" / "val"
    assert (
        main(["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--errors", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "errors at IoU 0.5" in printed and "false_positive" in printed
    doc = json.loads((tmp_path / "scores" / "val_errors.json").read_text())
    assert doc["overall"]["false_positive"] == 1 and doc["overall"]["matched"] == 2
    assert doc["overall"]["sizes"]["false_positive"] == [1, 0, 0, 0, 0]  # under 100 px
    assert doc["images"]["img"]["precision"] == 2 / 3
