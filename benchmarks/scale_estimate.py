"""How well the scale estimate (pipeline.slide.scale) finds a slide's resolution from its nuclei.

    python benchmarks/scale_estimate.py --calibrate   # the shipped model's reference nucleus area
    python benchmarks/scale_estimate.py [--split validation|training|all] [--factors 0.5 1 2 4]

MoNuSeg 2018 training tiles (40x, 0.25 µm/px; the project's data folder, never the test set) are resampled
by each factor (0.5 = 80x, 2 = 20x, 4 = 10x), read as slides without metadata, and the estimate
is compared with the true resolution. ``--calibrate`` measures the median nucleus area the model
finds on the training split at its true scale (the constant ``REFERENCE_AREA_PX``). Prints one line
per image and the share within ±20 % and within 1.5×, per factor and overall.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.io.annotations import TRAINING_IMAGES, VALIDATION_IMAGES, data_dir, read_rgb
from pipeline.io.readers import ArraySlide
from pipeline.kernels.stain import reinhard_stats
from pipeline.kernels.tissue import tissue_mask
from pipeline.runtime import load_model
from pipeline.slide.scale import N_WINDOWS, WINDOW_PX, _read_at, estimate_mpp, tissue_windows


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The image as a scanner at ``factor`` × 0.25 µm/px would give it (area-averaged when smaller)."""
    from skimage.transform import rescale

    if factor == 1:
        return rgb
    out = rescale(rgb.astype(np.float32) / 255, 1 / factor, channel_axis=2, anti_aliasing=factor > 1, order=1)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def slide_inputs(rgb: np.ndarray):  # type: ignore[no-untyped-def]
    slide = ArraySlide(rgb, mpp=None)
    tissue = tissue_mask(rgb)
    return slide, tissue, reinhard_stats(rgb, tissue)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--split", choices=["validation", "training", "all"], default="validation")
    p.add_argument("--factors", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the per-image rows as JSON")
    args = p.parse_args()
    root = data_dir() / "monuseg2018_train"
    if not root.exists():
        print(f"{root} is not present", file=sys.stderr)
        return 2
    model = load_model(None, args.threads)
    if args.calibrate:
        medians = []
        for name in TRAINING_IMAGES:
            slide, tissue, stain = slide_inputs(read_rgb(root / name / "images" / f"{name}.png"))
            corners = tissue_windows(tissue, 1.0, slide.level_dimensions[0], WINDOW_PX, N_WINDOWS)
            areas = np.concatenate([_read_at(slide, c, WINDOW_PX, 0.25, model, stain)[0] for c in corners])
            medians.append(float(np.median(areas)))
            print(f"{name}: median nucleus area {medians[-1]:.0f} px over {areas.size} nuclei", flush=True)
        print(f"reference (median of the {len(medians)} images' medians): {np.median(medians):.0f} px")
        return 0
    names = {"validation": VALIDATION_IMAGES, "training": TRAINING_IMAGES}.get(args.split)
    names = names or TRAINING_IMAGES + VALIDATION_IMAGES
    rows = []
    for name in names:
        full = read_rgb(root / name / "images" / f"{name}.png")
        for f in args.factors:
            slide, tissue, stain = slide_inputs(resample(full, f))
            t0 = time.perf_counter()
            est = estimate_mpp(slide, tissue, 1.0, model, stain)
            seconds = time.perf_counter() - t0
            truth = 0.25 * f
            ratio = est.mpp / truth if est else float("nan")
            rows.append(
                {
                    "image": name,
                    "factor": f,
                    "true_mpp": truth,
                    "estimate": est.mpp if est else None,
                    "confidence": est.confidence if est else None,
                    "ratio": ratio,
                    "seconds": seconds,
                }
            )
            print(
                f"{name} ×{f:g}: true {truth:.3f}, estimate {est.mpp if est else float('nan'):.3f} "
                f"(ratio {ratio:.2f}, confidence {est.confidence if est else 0:.2f}, {seconds:.1f} s)",
                flush=True,
            )
    ratios = np.array([r["ratio"] for r in rows])
    for f in args.factors:
        raw = [r["estimate"] for r in rows if r["factor"] == f and r["estimate"]]
        print(f"factor {f:g}: median estimate {np.median(raw):.4f} (true {0.25 * f:g})")
    for f in args.factors:
        sel = np.array([r["factor"] == f for r in rows])
        r = ratios[sel]
        print(
            f"factor {f:g}: within ±20 % {np.mean(np.abs(r - 1) <= 0.2):.0%}, within 1.5× "
            f"{np.mean((r >= 1 / 1.5) & (r <= 1.5)):.0%} (n={r.size})"
        )
    print(
        f"all: within ±20 % {np.mean(np.abs(ratios - 1) <= 0.2):.0%}, within 1.5× "
        f"{np.mean((ratios >= 1 / 1.5) & (ratios <= 1.5)):.0%} (n={ratios.size}); "
        f"median |log2 ratio| {np.median(np.abs(np.log2(ratios))):.2f}; "
        f"mean {np.mean([r['seconds'] for r in rows]):.1f} s per estimate"
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
