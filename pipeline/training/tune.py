"""Tune the post-processing thresholds of a model on the validation split, and score it.

    python -m pipeline.training.tune --model runs/x/step_002200.pt --out runs/x/thresholds.json
    python -m pipeline.training.tune --model pipeline/runtime/weights/nuclei_unet.onnx --score-only

The model (a torch checkpoint or an exported ONNX file) is run on the 7 validation images
(:data:`pipeline.io.annotations.VALIDATION_IMAGES`), each Reinhard-normalised with its own
statistics; :func:`pipeline.kernels.nuclei.instances_from_probabilities` turns the
probabilities into instances. The search is coordinate-wise over a small grid (two sweeps),
maximising AJI + PQ + Dice averaged over the validation images. Only validation images are
ever used here; the MoNuSeg test set is never touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.scoring import ImageScore, format_table, score_image, summarise
from pipeline.io.annotations import VALIDATION_IMAGES, AnnotatedImage, data_dir, load_monuseg
from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities
from pipeline.training.export import (
    ProbabilityFn,
    image_probabilities,
    load_checkpoint,
    onnx_probabilities,
    read_metadata,
    torch_probabilities,
)
from pipeline.training.targets import normalised_rgb

GRID: dict[str, tuple[float, ...]] = {
    "material_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "material_sigma": (0.5, 1.0),
    "centre_threshold": (0.03, 0.07, 0.15, 0.25, 0.4, 0.55, 0.7, 0.8),
    "centre_weak_threshold": (0.1, 0.2, 0.3, 0.4, 1.0),
    "centre_sigma": (0.5, 1.0, 2.0, 3.0),
    "min_area_px": (20, 30, 45, 60, 80, 100, 130),
    "min_nucleus_score": (0.0, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7),
    "centre_surface_weight": (0.0, 0.5, 1.0, 2.0),
    "distance_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),  # four-output models only
}
START = NucleusThresholds(
    centre_sigma=1.0, centre_threshold=0.25, material_sigma=0.5, material_threshold=0.5, min_area_px=20
)


def model_function(path: Path, threads: int = 2) -> tuple[ProbabilityFn, dict[str, str]]:
    """A probability function for a ``.pt`` checkpoint or an ``.onnx`` file (+ its metadata)."""
    if path.suffix == ".onnx":
        return onnx_probabilities(path, threads), read_metadata(path)
    import torch

    torch.set_num_threads(threads)
    return torch_probabilities(load_checkpoint(path)), {}


def validation_probabilities(run: ProbabilityFn, images: list[AnnotatedImage]) -> list[np.ndarray]:
    return [image_probabilities(run, normalised_rgb(a.rgb)) for a in images]


def score(
    probs: list[np.ndarray], images: list[AnnotatedImage], params: NucleusThresholds
) -> tuple[list[ImageScore], dict[str, float]]:
    scores = [
        score_image(a.name, a.labels, np.asarray(instances_from_probabilities(p, params)))
        for p, a in zip(probs, images, strict=True)
    ]
    return scores, summarise(scores)


def objective(overall: dict[str, float]) -> float:
    return overall["aji"] + overall["pq"] + overall["dice"]


def coordinate_search(
    probs: list[np.ndarray], images: list[AnnotatedImage], start: NucleusThresholds = START, sweeps: int = 2
) -> tuple[NucleusThresholds, dict[str, float], list[dict[str, Any]]]:
    """Coordinate-wise search over :data:`GRID`; returns the best thresholds, their overall
    scores and the trail of every evaluation.

    Parameters
    ----------
    probs : list of np.ndarray
        The model's probabilities for each image, 2×H×W or 4×H×W.
    images : list of AnnotatedImage
        The annotated images, in the same order.
    start : NucleusThresholds, optional
        Thresholds the search starts from.
    sweeps : int, optional
        Most sweeps over :data:`GRID`; the search stops after a sweep that changes nothing.

    Returns
    -------
    best : NucleusThresholds
        The best thresholds found.
    overall : dict of str to float
        Their scores over all images (AJI, PQ, Dice, ...).
    trail : list of dict
        Every evaluation: the thresholds with their scores.
    """
    best = start
    best_overall = score(probs, images, best)[1]
    trail = [{**dataclasses.asdict(best), **best_overall}]
    grid = {k: v for k, v in GRID.items() if k != "distance_weight" or probs[0].shape[0] == 4}
    for _ in range(sweeps):
        changed = False
        for name, values in grid.items():
            for v in values:
                cand = dataclasses.replace(best, **{name: type(getattr(best, name))(v)})
                if cand == best:
                    continue
                overall = score(probs, images, cand)[1]
                trail.append({**dataclasses.asdict(cand), **overall})
                if objective(overall) > objective(best_overall) + 1e-6:
                    best, best_overall, changed = cand, overall, True
            print(
                f"  {name}: best {getattr(best, name)} → AJI {best_overall['aji']:.4f} "
                f"PQ {best_overall['pq']:.4f} Dice {best_overall['dice']:.4f}",
                flush=True,
            )
        if not changed:
            break
    return best, best_overall, trail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help=".pt checkpoint or .onnx")
    parser.add_argument("--data", type=Path, default=data_dir() / "monuseg2018_train")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pipeline-train")
    parser.add_argument(
        "--score-only", action="store_true", help="no search: score with --thresholds, or the ONNX file's own metadata"
    )
    parser.add_argument("--thresholds", type=Path, help="JSON from a previous tune run")
    parser.add_argument("--out", type=Path, help="write the thresholds and scores (JSON)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--errors", action="store_true", help="also print the error classes at IoU 0.5 (pipeline.evaluation.errors)"
    )
    args = parser.parse_args(argv)
    t0 = time.time()
    run, meta = model_function(args.model, args.threads)
    images = load_monuseg(args.data, VALIDATION_IMAGES, args.cache)
    probs = validation_probabilities(run, images)
    t_infer = time.time() - t0
    print(f"probabilities of {len(images)} validation images: {t_infer:.0f} s", flush=True)
    if args.thresholds:
        params = NucleusThresholds(**json.loads(args.thresholds.read_text())["thresholds"])
    elif meta:
        params = NucleusThresholds.from_metadata(meta)
    else:
        params = START
    trail: list[dict[str, Any]] = []
    if not args.score_only:
        params, _, trail = coordinate_search(probs, images, params)
    scores, overall = score(probs, images, params)
    print(format_table(scores, overall))
    if args.errors:
        from pipeline.evaluation.errors import error_counts, format_errors

        labels = [np.asarray(instances_from_probabilities(p, params)) for p in probs]
        print(format_errors({a.name: error_counts(a.labels, lab) for a, lab in zip(images, labels, strict=True)}))
    print(json.dumps({"thresholds": dataclasses.asdict(params)}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "model": str(args.model),
            "thresholds": dataclasses.asdict(params),
            "overall": overall,
            "images": {s.image: dataclasses.asdict(s.metrics) for s in scores},
            "inference_seconds": round(t_infer, 1),
            "search_trail": trail,
        }
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
