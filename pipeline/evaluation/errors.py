"""Where a segmentation loses: every object sorted into one error class at IoU 0.5.

A prediction and a true nucleus whose IoU exceeds 0.5 are a *match* (unique, as in PQ). Of what
is left:

- a **merge** is a prediction that holds at least half of each of two or more true nuclei;
- a **split** is a true nucleus that holds at least half of each of two or more predictions;
- a **false positive** is any other unmatched prediction (a fragment, or cytoplasm or stroma
  taken for a nucleus);
- a **miss** is any other unmatched true nucleus (the true nuclei inside a merge, and the
  predictions inside a split, are accounted for by the merge or the split).

Precision and recall are matches over predictions and over true nuclei. Areas are reported in
pixels of the label images, for false positives and merges by the prediction's area, for misses
and splits by the true nucleus'.

>>> import numpy as np
>>> truth = np.zeros((8, 12), dtype=int)
>>> truth[1:4, 1:4], truth[1:4, 5:8], truth[5:8, 1:4] = 1, 2, 3
>>> pred = np.zeros_like(truth)
>>> pred[1:4, 1:8] = 1            # nuclei 1 and 2 as one
>>> pred[5:8, 9:12] = 2           # nothing there
>>> e = error_counts(truth, pred)
>>> (e.matched, e.false_positive, e.missed, e.merged, e.split)
(0, 1, 1, 1, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluation.metrics import overlaps

IOU_MATCH = 0.5
HALF = 0.5  # share of an object that must lie in another for a merge or a split
AREA_BINS_PX = (100, 200, 400, 800)  # the size classes the report counts errors in (upper bounds)


@dataclass(frozen=True)
class ErrorCounts:
    """One image's (or the sum of several images') objects by error class, with their areas."""

    matched: int
    false_positive: int
    missed: int
    merged: int
    split: int
    n_true: int
    n_pred: int
    areas: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def precision(self) -> float:
        return self.matched / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.n_true if self.n_true else 1.0

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        keys = set(self.areas) | set(other.areas)
        return ErrorCounts(
            self.matched + other.matched,
            self.false_positive + other.false_positive,
            self.missed + other.missed,
            self.merged + other.merged,
            self.split + other.split,
            self.n_true + other.n_true,
            self.n_pred + other.n_pred,
            {k: self.areas.get(k, []) + other.areas.get(k, []) for k in sorted(keys)},
        )


ERROR_CLASSES = ("false_positive", "missed", "merged", "split")


def error_counts(truth: np.ndarray, pred: np.ndarray) -> ErrorCounts:
    """Sort the objects of ``truth`` and ``pred`` (H×W instance labels) into the error classes."""
    o = overlaps(truth, pred)
    n_true, n_pred = o.truth_ids.size, o.pred_ids.size
    if n_true == 0 or n_pred == 0:
        areas = {"false_positive": o.pred_area.tolist(), "missed": o.truth_area.tolist(), "merged": [], "split": []}
        return ErrorCounts(0, n_pred, n_true, 0, 0, n_true, n_pred, areas)
    matched = (o.inter / o.union) > IOU_MATCH
    truth_matched, pred_matched = matched.any(axis=1), matched.any(axis=0)
    # truth i is at least half inside pred j / pred j at least half inside truth i
    truth_in_pred = o.inter >= HALF * o.truth_area[:, None]
    pred_in_truth = o.inter >= HALF * o.pred_area[None, :]
    merges = ~pred_matched & (truth_in_pred.sum(axis=0) >= 2)
    splits = ~truth_matched & (pred_in_truth.sum(axis=1) >= 2)
    truth_in_merge = (truth_in_pred & merges[None, :]).any(axis=1)
    pred_in_split = (pred_in_truth & splits[:, None]).any(axis=0)
    false_positive = ~pred_matched & ~merges & ~pred_in_split
    missed = ~truth_matched & ~splits & ~truth_in_merge
    areas = {
        "false_positive": o.pred_area[false_positive].tolist(),
        "missed": o.truth_area[missed].tolist(),
        "merged": o.pred_area[merges].tolist(),
        "split": o.truth_area[splits].tolist(),
    }
    return ErrorCounts(
        int(matched.sum()),
        int(false_positive.sum()),
        int(missed.sum()),
        int(merges.sum()),
        int(splits.sum()),
        n_true,
        n_pred,
        areas,
    )


def size_histogram(areas: list[int]) -> list[int]:
    """Counts of ``areas`` in the bins of :data:`AREA_BINS_PX` (the last bin open-ended)."""
    return np.bincount(np.searchsorted(AREA_BINS_PX, areas, side="right"), minlength=len(AREA_BINS_PX) + 1).tolist()


def bin_labels() -> list[str]:
    edges = (0, *AREA_BINS_PX)
    return [f"{a}-{b}" for a, b in zip(edges, AREA_BINS_PX, strict=False)] + [f">={AREA_BINS_PX[-1]}"]


def format_errors(per_image: dict[str, ErrorCounts]) -> str:
    """The error table: per image and overall, then each class's size distribution (overall)."""
    head = (
        f"{'image':<28} {'n_true':>7} {'n_pred':>7} {'match':>6} {'FP':>5} {'missed':>6} {'merged':>6} "
        f"{'split':>5} {'prec':>6} {'recall':>6}"
    )
    lines = [f"errors at IoU {IOU_MATCH}", head, "-" * len(head)]
    total = None
    for name, e in per_image.items():
        total = e if total is None else total + e
        lines.append(_row(name, e))
    if total is not None:
        lines += ["-" * len(head), _row("overall", total), "", "sizes (px) of each error class, overall:"]
        labels = bin_labels()
        lines.append(f"{'class':<16} {'median':>7} " + " ".join(f"{lab:>9}" for lab in labels))
        for name in ERROR_CLASSES:
            areas = total.areas.get(name, [])
            median = f"{np.median(areas):7.0f}" if areas else f"{'-':>7}"
            lines.append(f"{name:<16} {median} " + " ".join(f"{n:>9d}" for n in size_histogram(areas)))
    return "\n".join(lines)


def _row(name: str, e: ErrorCounts) -> str:
    return (
        f"{name:<28} {e.n_true:7d} {e.n_pred:7d} {e.matched:6d} {e.false_positive:5d} {e.missed:6d} "
        f"{e.merged:6d} {e.split:5d} {e.precision:6.3f} {e.recall:6.3f}"
    )


def errors_document(per_image: dict[str, ErrorCounts]) -> dict:
    """The same as JSON: counts, precision, recall, and the size histograms, per image and overall."""

    def one(e: ErrorCounts) -> dict:
        return {
            "n_true": e.n_true,
            "n_pred": e.n_pred,
            "matched": e.matched,
            "false_positive": e.false_positive,
            "missed": e.missed,
            "merged": e.merged,
            "split": e.split,
            "precision": e.precision,
            "recall": e.recall,
            "size_bins_px": bin_labels(),
            "sizes": {k: size_histogram(e.areas.get(k, [])) for k in ERROR_CLASSES},
        }

    images = {name: one(e) for name, e in per_image.items()}
    total = sum(per_image.values(), start=ErrorCounts(0, 0, 0, 0, 0, 0, 0, {}))
    return {"iou": IOU_MATCH, "images": images, "overall": one(total)}
