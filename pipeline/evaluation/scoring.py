"""Score nucleus segmentations against ground truth (the paper's metrics, docs/model.md).

    python -m pipeline.evaluate --pred DIR --truth DIR_OR_FILES [--subset validation] [--out results]

``--pred``: a folder of ``<stem>_labels.tif`` (or ``.png``) instance label images.
``--truth``: folders or files, matched to predictions by stem: a MoNuSeg image folder
(``<stem>/masks/*.png``, one mask per nucleus), a folder of such folders, MoNuSeg XML files
(``<stem>.xml``, rasterised on the prediction's grid), or label images (``<stem>.tif``,
``<stem>_labels.tif``, ``.png``).

Per image: Dice, Instance-Dice, AJI, PQ, counts. Overall: Dice averaged over patches with
weights = ground-truth + predicted nuclei count (the paper); Instance-Dice, AJI and PQ as the
mean over images (the challenges' convention) and AJI also pooled; nuclei-count Pearson r and
MAE% = mean|p − t| / mean t over patches. Patches: the images cut into a grid of
``--patch`` px squares (250 → 16 per MoNuSeg image); the segmentation itself is of the whole
image, so no nucleus is cut by a patch border before it is scored. Writes ``OUT.csv``
(one row per image) and ``OUT.json`` (overall + per image + per patch).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import (
    ImageMetrics,
    count_mae_percent,
    count_objects,
    count_pearson_r,
    dice,
    image_metrics,
    weighted_dice,
)
from pipeline.io.outputs.spreadsheet import write_csv_atomic

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
PATCH_PX = 250  # the paper scored 256-px patches on their central 226 px; 250 tiles 1000 exactly


@dataclass(frozen=True)
class PatchScore:
    image: str
    row: int
    col: int
    dice: float
    truth_count: int
    pred_count: int


@dataclass(frozen=True)
class ImageScore:
    image: str
    metrics: ImageMetrics
    patches: tuple[PatchScore, ...]


def patch_scores(name: str, truth: np.ndarray, pred: np.ndarray, patch: int = PATCH_PX) -> list[PatchScore]:
    """Dice and counts on each full ``patch``×``patch`` square of the image grid (a nucleus
    counts in every patch it has pixels in).

    Parameters
    ----------
    name : str
        The image's name, carried into each score.
    truth, pred : np.ndarray
        Ground-truth and predicted instance labels of the image, int, same shape, 0 = background.
    patch : int, optional
        Side of a patch, in px; a partial patch at the right or bottom edge is not scored.

    Returns
    -------
    list of PatchScore
        One per patch, in raster order: its (row, column) origin, Dice and both nucleus counts.
    """
    out = []
    for r in range(0, truth.shape[0] - patch + 1, patch):
        for c in range(0, truth.shape[1] - patch + 1, patch):
            t, p = truth[r : r + patch, c : c + patch], pred[r : r + patch, c : c + patch]
            out.append(PatchScore(name, r, c, dice(t, p), count_objects(t), count_objects(p)))
    return out


def score_image(name: str, truth: np.ndarray, pred: np.ndarray, patch: int = PATCH_PX) -> ImageScore:
    """The image's metrics (:func:`image_metrics`) and its patches' scores (:func:`patch_scores`).

    Parameters
    ----------
    name : str
        The image's name.
    truth, pred : np.ndarray
        Ground-truth and predicted instance labels, int, same shape, 0 = background.
    patch : int, optional
        Side of a scored patch, in px.

    Returns
    -------
    ImageScore
        The name, the image's metrics and the patches' scores.

    Raises
    ------
    ValueError
        When ``truth`` and ``pred`` differ in shape.
    """
    if truth.shape != pred.shape:
        raise ValueError(f"{name}: truth {truth.shape} and prediction {pred.shape} differ in shape")
    return ImageScore(name, image_metrics(truth, pred), tuple(patch_scores(name, truth, pred, patch)))


def summarise(scores: Iterable[ImageScore]) -> dict[str, float]:
    """Overall figures over images and their patches."""
    scores = list(scores)
    patches = [p for s in scores for p in s.patches]
    tc = np.array([p.truth_count for p in patches])
    pc = np.array([p.pred_count for p in patches])
    m = [s.metrics for s in scores]
    inter = sum(x.aji_intersection for x in m)
    union = sum(x.aji_union for x in m)
    return {
        "images": len(scores),
        "patches": len(patches),
        "dice": weighted_dice(np.array([p.dice for p in patches]), tc, pc),
        "instance_dice": float(np.mean([x.instance_dice for x in m])),
        "aji": float(np.mean([x.aji for x in m])),
        "aji_pooled": inter / union if union else float("nan"),
        "pq": float(np.mean([x.pq for x in m])),
        "count_r": count_pearson_r(tc, pc),
        "mae_percent": count_mae_percent(tc, pc),
        "truth_nuclei": int(sum(x.truth_count for x in m)),
        "pred_nuclei": int(sum(x.pred_count for x in m)),
    }


def _stem(path: Path) -> str:
    name = path.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[: -len("_labels")] if name.endswith("_labels") else name


def find_predictions(folder: Path) -> dict[str, Path]:
    """``<stem>_labels.tif``/``.png`` (or plain ``<stem>.tif``) files of a folder, by stem."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES:
            if p.stem.endswith("_labels") or _stem(p) not in found:
                found[_stem(p)] = p
    return found


def find_truths(paths: list[Path]) -> dict[str, Path]:
    """Ground-truth sources by stem, from files and folders (see the module docstring)."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_file():
            found[_stem(path) if path.suffix.lower() != ".xml" else path.stem] = path
        elif (path / "masks").is_dir():
            found[path.name] = path
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_dir() and (child / "masks").is_dir():
                    found[child.name] = child
                elif child.is_file() and child.suffix.lower() == ".xml":
                    found[child.stem] = child
                elif child.is_file() and child.suffix.lower() in LABEL_SUFFIXES:
                    found.setdefault(_stem(child), child)
        else:
            raise FileNotFoundError(path)
    return found


def format_table(scores: list[ImageScore], overall: dict[str, float]) -> str:
    head = f"{'image':<28} {'Dice':>6} {'InstD':>6} {'AJI':>6} {'PQ':>6} {'n_true':>7} {'n_pred':>7}"
    lines = [head, "-" * len(head)]
    for s in scores:
        m = s.metrics
        lines.append(
            f"{s.image:<28} {m.dice:6.3f} {m.instance_dice:6.3f} {m.aji:6.3f} {m.pq:6.3f} "
            f"{m.truth_count:7d} {m.pred_count:7d}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'overall':<28} {overall['dice']:6.3f} {overall['instance_dice']:6.3f} {overall['aji']:6.3f} "
        f"{overall['pq']:6.3f} {overall['truth_nuclei']:7d} {overall['pred_nuclei']:7d}"
    )
    lines.append(
        f"count r (over {overall['patches']} patches) {overall['count_r']:.3f}; "
        f"MAE% {overall['mae_percent']:.1f}; AJI pooled {overall['aji_pooled']:.3f}; Dice = count-weighted over patches"
    )
    return "\n".join(lines)


def write_results(out: Path, scores: list[ImageScore], overall: dict[str, float], extra: dict[str, Any]) -> None:
    """Write the scores as ``out`` with suffix ``.csv`` (one row per image) and ``.json`` (everything).

    Parameters
    ----------
    out : Path
        The results' path; its suffix is replaced by ``.csv`` and ``.json``, its folder created.
    scores : list of ImageScore
        The images' scores.
    overall : dict of str to float
        The metrics over all images.
    extra : dict
        More top-level fields of the JSON (the model, the settings, ...).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = [fl.name for fl in dataclasses.fields(ImageMetrics)]
    write_csv_atomic(
        out.with_suffix(".csv"),
        ["image", *fields],
        ([s.image, *(getattr(s.metrics, k) for k in fields)] for s in scores),
    )
    doc = {
        **extra,
        "overall": overall,
        "images": {s.image: dataclasses.asdict(s.metrics) for s in scores},
        "patches": [dataclasses.asdict(p) for s in scores for p in s.patches],
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
