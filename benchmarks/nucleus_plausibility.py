"""What real H&E tissue yields, for the bounds a slide's nuclei are checked against
(``pipeline.slide.plausibility``): nuclei per mm² of tissue and mean nucleus area (µm²).

    python benchmarks/nucleus_plausibility.py --monuseg DIR [--slides SLIDE ...] [--limit N]

``--monuseg``: the MoNuSeg 2018 training folder (30 images of 1000² px at 40x, one mask per
nucleus): for each image the ground truth (nuclei per mm² of the image, mean area) and what the
shipped model finds through the predict tool's own path (``pipeline.cli.predict.predict_labels``,
0.25 µm/px: nuclei per mm² of the tissue it detects, mean area). ``--slides``: whole-slide files
segmented as a run does (``pipeline.slide.process_slide_inline``, their own resolution).
Prints one row per image and the range of each figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.cli.predict import predict_labels
from pipeline.config import Config
from pipeline.io.annotations import read_truth
from pipeline.io.readers import SlideError
from pipeline.manifest import SlideEntry
from pipeline.slide import process_slide_inline

MONUSEG_MPP = 0.25  # 40x (MoNuSeg documentation)


def truth_figures(image_dir: Path) -> tuple[float, float]:
    """Ground truth of one MoNuSeg image: nuclei per mm² of the image, mean area in µm²."""
    labels = read_truth(image_dir)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0] * MONUSEG_MPP**2
    image_mm2 = labels.size * MONUSEG_MPP**2 / 1e6
    return len(areas) / image_mm2, float(areas.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--monuseg", type=Path, help="MoNuSeg 2018 training folder (<ID>/images, <ID>/masks)")
    p.add_argument("--slides", type=Path, nargs="*", default=[], help="whole-slide files, segmented at their own mpp")
    p.add_argument("--limit", type=int, default=0, help="first N MoNuSeg images only (0: all)")
    args = p.parse_args()
    config = Config(progress=False)
    rows: list[tuple[str, str, float, float, float]] = []  # source, name, per mm², mean µm², tissue mm²
    if args.monuseg:
        folders = sorted(d for d in args.monuseg.iterdir() if (d / "images").is_dir())
        for d in folders[: args.limit or None]:
            density, area = truth_figures(d)
            rows.append(("MoNuSeg truth", d.name, density, area, 0.0625))
            started = time.perf_counter()
            _, stats = predict_labels(next((d / "images").glob("*.png")), config, mpp=MONUSEG_MPP)
            rows.append(
                ("MoNuSeg predicted", d.name, stats["nuclei_per_mm2"], stats["area_mean_um2"], stats["tissue_mm2"])
            )
            print(f"{d.name}: truth {density:,.0f}/mm² {area:.1f} µm²; predicted {rows[-1][2]:,.0f}/mm² "
                  f"{rows[-1][3]:.1f} µm² ({time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip
    for slide in args.slides:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                stats = process_slide_inline(SlideEntry(slide_id=slide.stem, slide_path=slide), tmp, config)
            except SlideError as exc:  # refused (too coarse to segment): nothing to measure
                print(f"{slide.name}: refused: {exc}", flush=True)
                continue
        rows.append(
            ("slide", slide.name, stats["nuclei_per_mm2"], stats["area_mean_um2"], stats["tissue_mm2"])
        )  # fmt: skip
        print(
            f"{slide.name}: {stats['n_nuclei']:,} nuclei, {rows[-1][2]:,.0f}/mm² of {rows[-1][4]:.2f} mm² tissue, "
            f"mean {rows[-1][3]:.1f} µm² (mpp {stats['mpp']:.3f} from {stats['mpp_source']})",
            flush=True,
        )
    print("\n| source | image | nuclei per mm² | mean area µm² | tissue mm² |\n|---|---|---|---|---|")
    for source, name, density, area, tissue in rows:
        print(f"| {source} | {name} | {density:,.0f} | {area:.1f} | {tissue:.3f} |")
    for source in dict.fromkeys(r[0] for r in rows):
        d = [r[2] for r in rows if r[0] == source]
        a = [r[3] for r in rows if r[0] == source]
        print(f"{source}: nuclei per mm² {min(d):,.0f} .. {max(d):,.0f}; mean area {min(a):.1f} .. {max(a):.1f} µm²")


if __name__ == "__main__":
    main()
