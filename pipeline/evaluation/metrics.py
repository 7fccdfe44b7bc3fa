"""Segmentation metrics of the paper (defined in docs/model.md) as pure numpy functions on instance labels.

All take ``truth`` and ``pred``: integer H×W label images (0 = background, any positive ids).

- :func:`dice` — pixel Dice of the foreground (nucleus vs not).
- :func:`instance_dice` — object-level Dice of the MICCAI gland/nucleus challenges
  (Sirinukunwattana et al. 2017; Vu et al. 2019): each object is matched to the object of the
  other image it overlaps most, Dice per pair, averaged with area weights, both directions.
- :func:`aggregated_jaccard_index` — AJI (Kumar et al. 2017).
- :func:`panoptic_quality` — PQ (Kirillov et al. 2019): matches at IoU > 0.5.
- :func:`weighted_dice`, :func:`count_pearson_r`, :func:`count_mae_percent` — the paper's
  patch-level aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Overlaps:
    """Pairwise intersections between the objects of two label images.

    ``truth_ids``/``pred_ids``: the object ids; ``truth_area``/``pred_area``: their areas;
    ``inter``: dense (n_truth × n_pred) intersection counts."""

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_area: np.ndarray
    pred_area: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        return self.truth_area[:, None] + self.pred_area[None, :] - self.inter


def _check(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(truth), np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {t.shape} vs {p.shape}")
    if t.ndim != 2:
        raise ValueError(f"expected 2-D label images, got {t.ndim}-D")
    return t.astype(np.int64, copy=False), p.astype(np.int64, copy=False)


def overlaps(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Areas and pairwise intersections of all objects (O(pixels + pairs))."""
    t, p = _check(truth, pred)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_inv, p_inv = t_inv.ravel(), p_inv.ravel()
    joint = np.bincount(t_inv * len(p_ids) + p_inv, minlength=len(t_ids) * len(p_ids))
    joint = joint.reshape(len(t_ids), len(p_ids))
    t_area = joint.sum(axis=1)
    p_area = joint.sum(axis=0)
    t_keep = t_ids != 0
    p_keep = p_ids != 0
    return Overlaps(
        truth_ids=t_ids[t_keep],
        pred_ids=p_ids[p_keep],
        truth_area=t_area[t_keep],
        pred_area=p_area[p_keep],
        inter=joint[np.ix_(t_keep, p_keep)],
    )


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Pixel Dice of the foregrounds; 1.0 when both are empty."""
    t, p = _check(truth, pred)
    a, b = t > 0, p > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _one_way_object_dice(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> float:
    """Σ_i w_i Dice(A_i, B_{j*(i)}) with w_i = |A_i| / Σ|A|, j* = the B object overlapping A_i most."""
    if area_a.size == 0:
        return 0.0
    if area_b.size == 0:
        return 0.0
    best = inter.argmax(axis=1)
    i_best = inter[np.arange(area_a.size), best]
    d = np.where(i_best > 0, 2.0 * i_best / (area_a + area_b[best]), 0.0)
    return float((area_a * d).sum() / area_a.sum())


def instance_dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Object-level Dice: ½ (Σ_i γ_i D(G_i, S*(G_i)) + Σ_j σ_j D(S_j, G*(S_j))), area-weighted.
    1.0 when both images are empty, 0.0 when only one is."""
    o = overlaps(truth, pred)
    if o.truth_ids.size == 0 and o.pred_ids.size == 0:
        return 1.0
    g = _one_way_object_dice(o.inter, o.truth_area, o.pred_area)
    s = _one_way_object_dice(o.inter.T, o.pred_area, o.truth_area)
    return 0.5 * (g + s)


def aji_counts(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(Σ intersections, Σ unions) of the AJI, so images can be pooled.

    Kumar et al. 2017: every ground-truth nucleus G_i is paired with the predicted S_j of
    highest IoU (any S may be used more than once; no match → G_i alone adds to the union);
    every predicted object used by no pair adds its area to the union."""
    o = overlaps(truth, pred)
    if o.truth_ids.size == 0:
        return 0, int(o.pred_area.sum())
    if o.pred_ids.size == 0:
        return 0, int(o.truth_area.sum())
    iou = o.inter / o.union
    best = iou.argmax(axis=1)
    rows = np.arange(o.truth_ids.size)
    matched = o.inter[rows, best] > 0
    c = int(o.inter[rows, best][matched].sum())
    u = int(o.union[rows, best][matched].sum()) + int(o.truth_area[~matched].sum())
    used = np.zeros(o.pred_ids.size, dtype=bool)
    used[best[matched]] = True
    u += int(o.pred_area[~used].sum())
    return c, u


def aggregated_jaccard_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """AJI; 1.0 when both images are empty."""
    c, u = aji_counts(truth, pred)
    return 1.0 if u == 0 else c / u


@dataclass(frozen=True)
class PanopticCounts:
    tp: int
    fp: int
    fn: int
    iou_sum: float

    @property
    def pq(self) -> float:
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return 1.0 if denom == 0 else self.iou_sum / denom

    @property
    def dq(self) -> float:
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return 1.0 if denom == 0 else self.tp / denom

    @property
    def sq(self) -> float:
        return 0.0 if self.tp == 0 else self.iou_sum / self.tp


def panoptic_counts(truth: np.ndarray, pred: np.ndarray) -> PanopticCounts:
    """Matches at IoU > 0.5 (unique by construction) → TP, FP, FN and the matched IoUs."""
    o = overlaps(truth, pred)
    if o.truth_ids.size == 0 or o.pred_ids.size == 0:
        return PanopticCounts(0, int(o.pred_ids.size), int(o.truth_ids.size), 0.0)
    iou = o.inter / o.union
    match = iou > 0.5
    tp = int(match.sum())
    return PanopticCounts(tp, int(o.pred_ids.size) - tp, int(o.truth_ids.size) - tp, float(iou[match].sum()))


def panoptic_quality(truth: np.ndarray, pred: np.ndarray) -> float:
    """PQ = Σ_TP IoU / (TP + ½FP + ½FN); 1.0 when both are empty."""
    return panoptic_counts(truth, pred).pq


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct positive labels."""
    ids = np.unique(np.asarray(labels))
    return int((ids > 0).sum())


def weighted_dice(dices: np.ndarray, truth_counts: np.ndarray, pred_counts: np.ndarray) -> float:
    """The paper's Dice over patches: average weighted by ground-truth + predicted nuclei count."""
    w = np.asarray(truth_counts, dtype=np.float64) + np.asarray(pred_counts, dtype=np.float64)
    if w.sum() == 0:
        return float(np.mean(dices)) if len(dices) else float("nan")
    return float((np.asarray(dices, dtype=np.float64) * w).sum() / w.sum())


def count_pearson_r(truth_counts: np.ndarray, pred_counts: np.ndarray) -> float:
    """Pearson correlation of nuclei counts over patches (nan with < 2 patches or no variance)."""
    t = np.asarray(truth_counts, dtype=np.float64)
    p = np.asarray(pred_counts, dtype=np.float64)
    if t.size < 2 or t.std() == 0 or p.std() == 0:
        return float("nan")
    return float(np.corrcoef(t, p)[0, 1])


def count_mae_percent(truth_counts: np.ndarray, pred_counts: np.ndarray) -> float:
    """MAE% = mean |p − t| / mean t × 100 over patches."""
    t = np.asarray(truth_counts, dtype=np.float64)
    p = np.asarray(pred_counts, dtype=np.float64)
    if t.size == 0 or t.mean() == 0:
        return float("nan")
    return float(np.abs(p - t).mean() / t.mean() * 100.0)


@dataclass(frozen=True)
class ImageMetrics:
    """All per-image figures from one overlap computation."""

    dice: float
    instance_dice: float
    aji: float
    aji_intersection: int
    aji_union: int
    pq: float
    dq: float
    sq: float
    truth_count: int
    pred_count: int


def image_metrics(truth: np.ndarray, pred: np.ndarray) -> ImageMetrics:
    """Dice, Instance-Dice, AJI, PQ and the two counts of one image."""
    c, u = aji_counts(truth, pred)
    pc = panoptic_counts(truth, pred)
    return ImageMetrics(
        dice=dice(truth, pred),
        instance_dice=instance_dice(truth, pred),
        aji=1.0 if u == 0 else c / u,
        aji_intersection=c,
        aji_union=u,
        pq=pc.pq,
        dq=pc.dq,
        sq=pc.sq,
        truth_count=count_objects(truth),
        pred_count=count_objects(pred),
    )
