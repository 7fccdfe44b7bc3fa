"""Measure the Reinhard target statistics (``REINHARD_TARGET`` in :mod:`pipeline.kernels.stain`).

The target is the lαβ mean and standard deviation of the tissue pixels of the MoNuSeg training
images (the training split only, all pixels pooled), so that stain-normalised slides look like
the data the U-net was trained on::

    python -m pipeline.training.stain_target [--data DIR]

``--data`` defaults to ``monuseg2018_train`` in the project's data folder
(:func:`pipeline.io.annotations.data_dir`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.io.annotations import TRAINING_IMAGES, data_dir, read_rgb
from pipeline.kernels.stain import StainStats, optical_density, rgb_to_lab_reinhard

# A pixel is tissue when its summed optical density exceeds this (white glass ≈ 0.05;
# faint eosin ≈ 0.3). Same order as the usual OD > 0.15 per-channel background cut.
TISSUE_MIN_OD_SUM = 0.2


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """Boolean H×W mask of the non-background pixels of an RGB uint8 tile."""
    return np.asarray(optical_density(rgb).sum(axis=-1) > TISSUE_MIN_OD_SUM)


def pooled_stats(images: list[np.ndarray]) -> StainStats:
    """lαβ mean and std over the tissue pixels of all images taken together."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for rgb in images:
        lab = np.asarray(rgb_to_lab_reinhard(rgb), dtype=np.float64)[tissue_pixels(rgb)]
        total += lab.sum(axis=0)
        total_sq += (lab**2).sum(axis=0)
        count += lab.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return StainStats(
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data_dir() / "monuseg2018_train")
    args = parser.parse_args(argv)
    images = [read_rgb(args.data / n / "images" / f"{n}.png") for n in TRAINING_IMAGES]
    stats = pooled_stats(images)
    print(json.dumps({"images": len(images), **stats.as_dict()}, indent=1))
    m, s = stats.mean, stats.std
    print(
        "REINHARD_TARGET = StainStats("
        f"mean=({m[0]:.4f}, {m[1]:.4f}, {m[2]:.4f}), std=({s[0]:.4f}, {s[1]:.4f}, {s[2]:.4f}))"
    )


if __name__ == "__main__":
    main()
