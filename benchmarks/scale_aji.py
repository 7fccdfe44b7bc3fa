"""What a missing resolution costs in quality: the 7 MoNuSeg validation images at 20x, segmented
without metadata (scale estimated) and with the right ``--mpp``, scored against their annotations.

    python benchmarks/scale_aji.py [--factor 2] [--work /tmp/scale_aji]

Images are area-downsampled by ``--factor`` (2 = 20x) and written as PNG without resolution;
annotations are downsampled with nearest-neighbour. Prints both runs' scores (pipeline.evaluate)
and the AJI difference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from scale_estimate import resample

from pipeline.io.annotations import VALIDATION_IMAGES, data_dir, load_monuseg


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed: {done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/scale_aji"))
    args = p.parse_args()
    import tifffile
    from PIL import Image

    images = load_monuseg(
        data_dir() / "monuseg2018_train", VALIDATION_IMAGES, cache_dir=Path.home() / ".cache" / "pipeline-train"
    )
    src, truth = args.work / "images", args.work / "truth"
    src.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    for im in images:
        small = resample(im.rgb, args.factor)
        Image.fromarray(small).save(src / f"{im.name}.png")
        rows = (np.arange(small.shape[0]) * args.factor + args.factor / 2).astype(int).clip(0, im.labels.shape[0] - 1)
        cols = (np.arange(small.shape[1]) * args.factor + args.factor / 2).astype(int).clip(0, im.labels.shape[1] - 1)
        tifffile.imwrite(truth / f"{im.name}.tif", im.labels[np.ix_(rows, cols)].astype(np.uint32))
    pngs = [str(p) for p in sorted(src.glob("*.png"))]
    results = {}
    for label, extra in (("estimated", []), ("right --mpp", ["--mpp", str(0.25 * args.factor)])):
        out = args.work / label.replace(" ", "_").replace("--", "")
        print(cli("pipeline.predict", *pngs, "--out", str(out), *extra))
        print((out / "scales.csv").read_text())
        table = cli("pipeline.evaluate", "--pred", str(out), "--truth", str(truth))
        print(f"== {label}\n{table}")
        results[label] = table
    return 0


if __name__ == "__main__":
    sys.exit(main())
